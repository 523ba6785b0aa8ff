// Original file: proto/noisescope/v1/noisescope.proto

import type { LayerCosines as _noisescope_v1_LayerCosines, LayerCosines__Output as _noisescope_v1_LayerCosines__Output } from '../../noisescope/v1/LayerCosines.js';
import type { RankAgreement as _noisescope_v1_RankAgreement, RankAgreement__Output as _noisescope_v1_RankAgreement__Output } from '../../noisescope/v1/RankAgreement.js';

export interface GradientDiversity {
  'rank'?: (number);
  'microBatches'?: (number);
  'cosines'?: (number | string)[];
  'layers'?: (_noisescope_v1_LayerCosines)[];
  'meanCosine'?: (number | string)[];
  'disagreeing'?: (number)[];
  'acrossRanks'?: (_noisescope_v1_RankAgreement | null);
}

export interface GradientDiversity__Output {
  'rank': (number);
  'microBatches': (number);
  'cosines': (number)[];
  'layers': (_noisescope_v1_LayerCosines__Output)[];
  'meanCosine': (number)[];
  'disagreeing': (number)[];
  'acrossRanks': (_noisescope_v1_RankAgreement__Output | null);
}
