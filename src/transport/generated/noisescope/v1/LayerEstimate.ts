// Original file: proto/noisescope/v1/noisescope.proto

import type { Long } from '@grpc/proto-loader';

export interface LayerEstimate {
  'name'?: (string);
  'numel'?: (number | string | Long);
  'gradSqNorm'?: (number | string);
  'traceSigma'?: (number | string);
  'bSimple'?: (number | string);
}

export interface LayerEstimate__Output {
  'name': (string);
  'numel': (number);
  'gradSqNorm': (number);
  'traceSigma': (number);
  'bSimple': (number);
}
