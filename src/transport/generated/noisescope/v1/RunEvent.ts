// Original file: proto/noisescope/v1/noisescope.proto

import type { RunInfo as _noisescope_v1_RunInfo, RunInfo__Output as _noisescope_v1_RunInfo__Output } from '../../noisescope/v1/RunInfo.js';
import type { StepStats as _noisescope_v1_StepStats, StepStats__Output as _noisescope_v1_StepStats__Output } from '../../noisescope/v1/StepStats.js';
import type { LayerStats as _noisescope_v1_LayerStats, LayerStats__Output as _noisescope_v1_LayerStats__Output } from '../../noisescope/v1/LayerStats.js';
import type { Health as _noisescope_v1_Health, Health__Output as _noisescope_v1_Health__Output } from '../../noisescope/v1/Health.js';
import type { Recommendation as _noisescope_v1_Recommendation, Recommendation__Output as _noisescope_v1_Recommendation__Output } from '../../noisescope/v1/Recommendation.js';

export interface RunEvent {
  'runStarted'?: (_noisescope_v1_RunInfo | null);
  'step'?: (_noisescope_v1_StepStats | null);
  'layers'?: (_noisescope_v1_LayerStats | null);
  'health'?: (_noisescope_v1_Health | null);
  'runEnded'?: (_noisescope_v1_RunInfo | null);
  'recommendation'?: (_noisescope_v1_Recommendation | null);
  'runUpdated'?: (_noisescope_v1_RunInfo | null);
  'kind'?: "runStarted"|"step"|"layers"|"health"|"runEnded"|"recommendation"|"runUpdated";
}

export interface RunEvent__Output {
  'runStarted'?: (_noisescope_v1_RunInfo__Output | null);
  'step'?: (_noisescope_v1_StepStats__Output | null);
  'layers'?: (_noisescope_v1_LayerStats__Output | null);
  'health'?: (_noisescope_v1_Health__Output | null);
  'runEnded'?: (_noisescope_v1_RunInfo__Output | null);
  'recommendation'?: (_noisescope_v1_Recommendation__Output | null);
  'runUpdated'?: (_noisescope_v1_RunInfo__Output | null);
  'kind'?: "runStarted"|"step"|"layers"|"health"|"runEnded"|"recommendation"|"runUpdated";
}
