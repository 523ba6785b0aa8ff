// Original file: proto/noisescope/v1/noisescope.proto

import type { Long } from '@grpc/proto-loader';

export interface Layer {
  'name'?: (string);
  'numel'?: (number | string | Long);
  'kind'?: (string);
}

export interface Layer__Output {
  'name': (string);
  'numel': (number);
  'kind': (string);
}
