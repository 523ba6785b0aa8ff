// Original file: proto/noisescope/v1/noisescope.proto

import type { DType as _noisescope_v1_DType, DType__Output as _noisescope_v1_DType__Output } from '../../noisescope/v1/DType.js';
import type { Long } from '@grpc/proto-loader';

export interface Sketch {
  'seed'?: (number | string | Long);
  'size'?: (number);
  'dtype'?: (_noisescope_v1_DType);
  'data'?: (Buffer | Uint8Array | string);
  'layers'?: (number);
}

export interface Sketch__Output {
  'seed': (number);
  'size': (number);
  'dtype': (_noisescope_v1_DType__Output);
  'data': (Buffer);
  'layers': (number);
}
