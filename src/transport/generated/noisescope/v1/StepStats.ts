// Original file: proto/noisescope/v1/noisescope.proto

import type { Source as _noisescope_v1_Source, Source__Output as _noisescope_v1_Source__Output } from '../../noisescope/v1/Source.js';
import type { Estimate as _noisescope_v1_Estimate, Estimate__Output as _noisescope_v1_Estimate__Output } from '../../noisescope/v1/Estimate.js';
import type { Long } from '@grpc/proto-loader';

export interface StepStats {
  'run'?: (string);
  'step'?: (number | string | Long);
  'source'?: (_noisescope_v1_Source);
  'globalBatch'?: (number | string | Long);
  'microBatches'?: (number);
  'ranks'?: (number);
  'levels'?: (number);
  'raw'?: (_noisescope_v1_Estimate | null);
  'smoothed'?: (_noisescope_v1_Estimate | null);
  'lr'?: (number | string);
  'loss'?: (number | string);
  'skipped'?: (boolean);
  'note'?: (string);
  'unixMs'?: (number | string);
  'stepsMeasured'?: (number | string | Long);
}

export interface StepStats__Output {
  'run': (string);
  'step': (number);
  'source': (_noisescope_v1_Source__Output);
  'globalBatch': (number);
  'microBatches': (number);
  'ranks': (number);
  'levels': (number);
  'raw': (_noisescope_v1_Estimate__Output | null);
  'smoothed': (_noisescope_v1_Estimate__Output | null);
  'lr': (number);
  'loss': (number);
  'skipped': (boolean);
  'note': (string);
  'unixMs': (number);
  'stepsMeasured': (number);
}
