// Original file: proto/noisescope/v1/noisescope.proto

import type { Long } from '@grpc/proto-loader';

export interface Goodbye {
  'reason'?: (string);
  'dropped'?: (number | string | Long);
}

export interface Goodbye__Output {
  'reason': (string);
  'dropped': (number);
}
