// Original file: proto/noisescope/v1/noisescope.proto

import type { Hello as _noisescope_v1_Hello, Hello__Output as _noisescope_v1_Hello__Output } from '../../noisescope/v1/Hello.js';
import type { GradientShard as _noisescope_v1_GradientShard, GradientShard__Output as _noisescope_v1_GradientShard__Output } from '../../noisescope/v1/GradientShard.js';
import type { StepEnd as _noisescope_v1_StepEnd, StepEnd__Output as _noisescope_v1_StepEnd__Output } from '../../noisescope/v1/StepEnd.js';
import type { Goodbye as _noisescope_v1_Goodbye, Goodbye__Output as _noisescope_v1_Goodbye__Output } from '../../noisescope/v1/Goodbye.js';
import type { StepBundle as _noisescope_v1_StepBundle, StepBundle__Output as _noisescope_v1_StepBundle__Output } from '../../noisescope/v1/StepBundle.js';
import type { StepBundles as _noisescope_v1_StepBundles, StepBundles__Output as _noisescope_v1_StepBundles__Output } from '../../noisescope/v1/StepBundles.js';

export interface RankMessage {
  'hello'?: (_noisescope_v1_Hello | null);
  'shard'?: (_noisescope_v1_GradientShard | null);
  'stepEnd'?: (_noisescope_v1_StepEnd | null);
  'goodbye'?: (_noisescope_v1_Goodbye | null);
  'bundle'?: (_noisescope_v1_StepBundle | null);
  'bundles'?: (_noisescope_v1_StepBundles | null);
  'kind'?: "hello"|"shard"|"stepEnd"|"goodbye"|"bundle"|"bundles";
}

export interface RankMessage__Output {
  'hello'?: (_noisescope_v1_Hello__Output | null);
  'shard'?: (_noisescope_v1_GradientShard__Output | null);
  'stepEnd'?: (_noisescope_v1_StepEnd__Output | null);
  'goodbye'?: (_noisescope_v1_Goodbye__Output | null);
  'bundle'?: (_noisescope_v1_StepBundle__Output | null);
  'bundles'?: (_noisescope_v1_StepBundles__Output | null);
  'kind'?: "hello"|"shard"|"stepEnd"|"goodbye"|"bundle"|"bundles";
}
