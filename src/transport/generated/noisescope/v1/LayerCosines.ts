// Original file: proto/noisescope/v1/noisescope.proto


export interface LayerCosines {
  'cosines'?: (number | string)[];
}

export interface LayerCosines__Output {
  'cosines': (number)[];
}
