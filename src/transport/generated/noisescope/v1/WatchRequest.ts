// Original file: proto/noisescope/v1/noisescope.proto


export interface WatchRequest {
  'run'?: (string);
}

export interface WatchRequest__Output {
  'run': (string);
}
