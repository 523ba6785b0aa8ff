// Original file: proto/noisescope/v1/noisescope.proto

import type { Welcome as _noisescope_v1_Welcome, Welcome__Output as _noisescope_v1_Welcome__Output } from '../../noisescope/v1/Welcome.js';
import type { Refusal as _noisescope_v1_Refusal, Refusal__Output as _noisescope_v1_Refusal__Output } from '../../noisescope/v1/Refusal.js';
import type { Recommendation as _noisescope_v1_Recommendation, Recommendation__Output as _noisescope_v1_Recommendation__Output } from '../../noisescope/v1/Recommendation.js';
import type { FlowControl as _noisescope_v1_FlowControl, FlowControl__Output as _noisescope_v1_FlowControl__Output } from '../../noisescope/v1/FlowControl.js';

export interface SidecarMessage {
  'welcome'?: (_noisescope_v1_Welcome | null);
  'refusal'?: (_noisescope_v1_Refusal | null);
  'recommendation'?: (_noisescope_v1_Recommendation | null);
  'flowControl'?: (_noisescope_v1_FlowControl | null);
  'kind'?: "welcome"|"refusal"|"recommendation"|"flowControl";
}

export interface SidecarMessage__Output {
  'welcome'?: (_noisescope_v1_Welcome__Output | null);
  'refusal'?: (_noisescope_v1_Refusal__Output | null);
  'recommendation'?: (_noisescope_v1_Recommendation__Output | null);
  'flowControl'?: (_noisescope_v1_FlowControl__Output | null);
  'kind'?: "welcome"|"refusal"|"recommendation"|"flowControl";
}
