// Original file: proto/noisescope/v1/noisescope.proto


export interface SquaredNorms {
  'values'?: (number | string)[];
}

export interface SquaredNorms__Output {
  'values': (number)[];
}
