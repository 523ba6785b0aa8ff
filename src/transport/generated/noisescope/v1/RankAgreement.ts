// Original file: proto/noisescope/v1/noisescope.proto


export interface RankAgreement {
  'cosines'?: (number | string)[];
  'meanCosine'?: (number | string);
  'othersCosine'?: (number | string);
  'disagrees'?: (boolean);
}

export interface RankAgreement__Output {
  'cosines': (number)[];
  'meanCosine': (number);
  'othersCosine': (number);
  'disagrees': (boolean);
}
