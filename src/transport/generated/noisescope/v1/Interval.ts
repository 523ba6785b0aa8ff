// Original file: proto/noisescope/v1/noisescope.proto


export interface Interval {
  'low'?: (number | string);
  'high'?: (number | string);
}

export interface Interval__Output {
  'low': (number);
  'high': (number);
}
