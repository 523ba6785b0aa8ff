// Original file: proto/noisescope/v1/noisescope.proto

import type { Objective as _noisescope_v1_Objective, Objective__Output as _noisescope_v1_Objective__Output } from '../../noisescope/v1/Objective.js';
import type { Long } from '@grpc/proto-loader';

export interface BatchPolicy {
  'objective'?: (_noisescope_v1_Objective);
  'minBatch'?: (number | string | Long);
  'maxBatch'?: (number | string | Long);
  'maxMicroBatch'?: (number);
  'maxFactor'?: (number | string);
  'window'?: (number);
  'monotone'?: (boolean);
}

export interface BatchPolicy__Output {
  'objective': (_noisescope_v1_Objective__Output);
  'minBatch': (number);
  'maxBatch': (number);
  'maxMicroBatch': (number);
  'maxFactor': (number);
  'window': (number);
  'monotone': (boolean);
}
