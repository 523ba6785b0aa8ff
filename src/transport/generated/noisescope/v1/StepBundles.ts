// Original file: proto/noisescope/v1/noisescope.proto

import type { StepBundle as _noisescope_v1_StepBundle, StepBundle__Output as _noisescope_v1_StepBundle__Output } from '../../noisescope/v1/StepBundle.js';

export interface StepBundles {
  'bundles'?: (_noisescope_v1_StepBundle)[];
}

export interface StepBundles__Output {
  'bundles': (_noisescope_v1_StepBundle__Output)[];
}
