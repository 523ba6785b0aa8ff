// Original file: proto/noisescope/v1/noisescope.proto

import type { Interval as _noisescope_v1_Interval, Interval__Output as _noisescope_v1_Interval__Output } from '../../noisescope/v1/Interval.js';
import type { EstimateSpread as _noisescope_v1_EstimateSpread, EstimateSpread__Output as _noisescope_v1_EstimateSpread__Output } from '../../noisescope/v1/EstimateSpread.js';

export interface Estimate {
  'gradSqNorm'?: (number | string);
  'traceSigma'?: (number | string);
  'bSimple'?: (number | string);
  'bSimpleInterval'?: (_noisescope_v1_Interval | null);
  'trusted'?: (boolean);
  'spread'?: (_noisescope_v1_EstimateSpread | null);
}

export interface Estimate__Output {
  'gradSqNorm': (number);
  'traceSigma': (number);
  'bSimple': (number);
  'bSimpleInterval': (_noisescope_v1_Interval__Output | null);
  'trusted': (boolean);
  'spread': (_noisescope_v1_EstimateSpread__Output | null);
}
