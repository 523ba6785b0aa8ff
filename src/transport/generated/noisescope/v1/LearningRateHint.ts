// Original file: proto/noisescope/v1/noisescope.proto


export interface LearningRateHint {
  'currentLr'?: (number | string);
  'suggestedLr'?: (number | string);
  'rule'?: (string);
  'note'?: (string);
}

export interface LearningRateHint__Output {
  'currentLr': (number);
  'suggestedLr': (number);
  'rule': (string);
  'note': (string);
}
