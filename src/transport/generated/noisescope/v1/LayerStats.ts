// Original file: proto/noisescope/v1/noisescope.proto

import type { LayerEstimate as _noisescope_v1_LayerEstimate, LayerEstimate__Output as _noisescope_v1_LayerEstimate__Output } from '../../noisescope/v1/LayerEstimate.js';
import type { Long } from '@grpc/proto-loader';

export interface LayerStats {
  'run'?: (string);
  'step'?: (number | string | Long);
  'layers'?: (_noisescope_v1_LayerEstimate)[];
}

export interface LayerStats__Output {
  'run': (string);
  'step': (number);
  'layers': (_noisescope_v1_LayerEstimate__Output)[];
}
