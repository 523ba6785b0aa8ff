// Original file: proto/noisescope/v1/noisescope.proto

import type { Long } from '@grpc/proto-loader';

export interface StepEnd {
  'step'?: (number | string | Long);
  'microBatches'?: (number);
  'localExamples'?: (number | string | Long);
  'globalExamples'?: (number | string | Long);
  'accumulatedSqNorms'?: (number | string)[];
  'reducedSqNorms'?: (number | string)[];
  'lr'?: (number | string);
  'loss'?: (number | string);
  'skipped'?: (boolean);
  'skipReason'?: (string);
  'unixMs'?: (number | string);
  'reducedIsShard'?: (boolean);
}

export interface StepEnd__Output {
  'step': (number);
  'microBatches': (number);
  'localExamples': (number);
  'globalExamples': (number);
  'accumulatedSqNorms': (number)[];
  'reducedSqNorms': (number)[];
  'lr': (number);
  'loss': (number);
  'skipped': (boolean);
  'skipReason': (string);
  'unixMs': (number);
  'reducedIsShard': (boolean);
}
