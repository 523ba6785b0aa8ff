// Original file: proto/noisescope/v1/noisescope.proto


export interface FlowControl {
  'every'?: (number);
}

export interface FlowControl__Output {
  'every': (number);
}
