// Original file: proto/noisescope/v1/noisescope.proto

import type { GradientShard as _noisescope_v1_GradientShard, GradientShard__Output as _noisescope_v1_GradientShard__Output } from '../../noisescope/v1/GradientShard.js';
import type { StepEnd as _noisescope_v1_StepEnd, StepEnd__Output as _noisescope_v1_StepEnd__Output } from '../../noisescope/v1/StepEnd.js';

export interface StepBundle {
  'shards'?: (_noisescope_v1_GradientShard)[];
  'end'?: (_noisescope_v1_StepEnd | null);
}

export interface StepBundle__Output {
  'shards': (_noisescope_v1_GradientShard__Output)[];
  'end': (_noisescope_v1_StepEnd__Output | null);
}
