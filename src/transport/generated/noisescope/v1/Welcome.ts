// Original file: proto/noisescope/v1/noisescope.proto


export interface Welcome {
  'protocolVersion'?: (number);
  'sidecarVersion'?: (string);
  'run'?: (string);
  'rank'?: (number);
  'takesBundles'?: (boolean);
}

export interface Welcome__Output {
  'protocolVersion': (number);
  'sidecarVersion': (string);
  'run': (string);
  'rank': (number);
  'takesBundles': (boolean);
}
