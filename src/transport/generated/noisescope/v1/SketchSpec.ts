// Original file: proto/noisescope/v1/noisescope.proto

import type { DType as _noisescope_v1_DType, DType__Output as _noisescope_v1_DType__Output } from '../../noisescope/v1/DType.js';

export interface SketchSpec {
  'sizes'?: (number)[];
  'dtype'?: (_noisescope_v1_DType);
}

export interface SketchSpec__Output {
  'sizes': (number)[];
  'dtype': (_noisescope_v1_DType__Output);
}
