// Original file: proto/noisescope/v1/noisescope.proto


export interface PerExampleSqNorms {
  'sums'?: (number | string)[];
}

export interface PerExampleSqNorms__Output {
  'sums': (number)[];
}
