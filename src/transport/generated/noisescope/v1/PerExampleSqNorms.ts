// Original file: proto/noisescope/v1/noisescope.proto


export interface PerExampleSqNorms {
  'sums'?: (number | string)[];
  'sampled'?: (boolean);
}

export interface PerExampleSqNorms__Output {
  'sums': (number)[];
  'sampled': (boolean);
}
