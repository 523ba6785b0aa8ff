// Original file: proto/noisescope/v1/noisescope.proto

import type { Action as _noisescope_v1_Action, Action__Output as _noisescope_v1_Action__Output } from '../../noisescope/v1/Action.js';
import type { Interval as _noisescope_v1_Interval, Interval__Output as _noisescope_v1_Interval__Output } from '../../noisescope/v1/Interval.js';
import type { Objective as _noisescope_v1_Objective, Objective__Output as _noisescope_v1_Objective__Output } from '../../noisescope/v1/Objective.js';
import type { LearningRateHint as _noisescope_v1_LearningRateHint, LearningRateHint__Output as _noisescope_v1_LearningRateHint__Output } from '../../noisescope/v1/LearningRateHint.js';
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
  'action'?: (_noisescope_v1_Action);
  'sequence'?: (number | string | Long);
  'noiseScale'?: (number | string);
  'noiseScaleInterval'?: (_noisescope_v1_Interval | null);
  'targetBatch'?: (number | string);
  'objective'?: (_noisescope_v1_Objective);
  'stepsFactor'?: (number | string);
  'examplesFactor'?: (number | string);
  'lrHint'?: (_noisescope_v1_LearningRateHint | null);
  'worldSize'?: (number);
  'unixMs'?: (number | string);
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
  'action': (_noisescope_v1_Action__Output);
  'sequence': (number);
  'noiseScale': (number);
  'noiseScaleInterval': (_noisescope_v1_Interval__Output | null);
  'targetBatch': (number);
  'objective': (_noisescope_v1_Objective__Output);
  'stepsFactor': (number);
  'examplesFactor': (number);
  'lrHint': (_noisescope_v1_LearningRateHint__Output | null);
  'worldSize': (number);
  'unixMs': (number);
}
