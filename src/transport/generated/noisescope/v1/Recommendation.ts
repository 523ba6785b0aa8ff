// Original file: proto/noisescope/v1/noisescope.proto

import type { Long } from '@grpc/proto-loader';

export interface Recommendation {
  'run'?: (string);
  'step'?: (number | string | Long);
  'currentGlobalBatch'?: (number | string | Long);
  'recommendedGlobalBatch'?: (number | string | Long);
  'microBatch'?: (number);
  'accumulationSteps'?: (number);
  'confidence'?: (number | string);
  'reason'?: (string);
}

export interface Recommendation__Output {
  'run': (string);
  'step': (number);
  'currentGlobalBatch': (number);
  'recommendedGlobalBatch': (number);
  'microBatch': (number);
  'accumulationSteps': (number);
  'confidence': (number);
  'reason': (string);
}
