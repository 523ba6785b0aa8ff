// Original file: proto/noisescope/v1/noisescope.proto


export interface EstimateSpread {
  'varGradSqNorm'?: (number | string);
  'varTraceSigma'?: (number | string);
  'covariance'?: (number | string);
  'df'?: (number | string);
}

export interface EstimateSpread__Output {
  'varGradSqNorm': (number);
  'varTraceSigma': (number);
  'covariance': (number);
  'df': (number);
}
