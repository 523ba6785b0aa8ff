// Original file: proto/noisescope/v1/noisescope.proto

import type { Long } from '@grpc/proto-loader';

export interface TemperatureChange {
  'fromLr'?: (number | string);
  'toLr'?: (number | string);
  'fromBatch'?: (number | string | Long);
  'toBatch'?: (number | string | Long);
}

export interface TemperatureChange__Output {
  'fromLr': (number);
  'toLr': (number);
  'fromBatch': (number);
  'toBatch': (number);
}
