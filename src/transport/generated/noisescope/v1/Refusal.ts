// Original file: proto/noisescope/v1/noisescope.proto

import type { Long } from '@grpc/proto-loader';

export interface Refusal {
  'code'?: (number);
  'message'?: (string);
  'step'?: (number | string | Long);
}

export interface Refusal__Output {
  'code': (number);
  'message': (string);
  'step': (number);
}
