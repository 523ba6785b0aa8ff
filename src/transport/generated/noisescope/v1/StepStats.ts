// Original file: proto/noisescope/v1/noisescope.proto

import type { Source as _noisescope_v1_Source, Source__Output as _noisescope_v1_Source__Output } from '../../noisescope/v1/Source.js';
import type { Estimate as _noisescope_v1_Estimate, Estimate__Output as _noisescope_v1_Estimate__Output } from '../../noisescope/v1/Estimate.js';
import type { TemperatureChange as _noisescope_v1_TemperatureChange, TemperatureChange__Output as _noisescope_v1_TemperatureChange__Output } from '../../noisescope/v1/TemperatureChange.js';
import type { GradientDiversity as _noisescope_v1_GradientDiversity, GradientDiversity__Output as _noisescope_v1_GradientDiversity__Output } from '../../noisescope/v1/GradientDiversity.js';
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
  'temperature'?: (number | string);
  'regimeStartStep'?: (number | string | Long);
  'temperatureChange'?: (_noisescope_v1_TemperatureChange | null);
  'diversity'?: (_noisescope_v1_GradientDiversity)[];
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
  'temperature': (number);
  'regimeStartStep': (number);
  'temperatureChange': (_noisescope_v1_TemperatureChange__Output | null);
  'diversity': (_noisescope_v1_GradientDiversity__Output)[];
}
