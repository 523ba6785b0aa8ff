// Original file: proto/noisescope/v1/noisescope.proto

import type { Long } from '@grpc/proto-loader';

export interface Health {
  'unixMs'?: (number | string);
  'ranksConnected'?: (number);
  'messages'?: (number | string | Long);
  'bytes'?: (number | string | Long);
  'refused'?: (number | string | Long);
  'stepsCompleted'?: (number | string | Long);
  'stepsIncomplete'?: (number | string | Long);
  'droppedByHooks'?: (number | string | Long);
  'computeBackend'?: (string);
  'ranksGone'?: (number);
  'watchEventsDropped'?: (number | string | Long);
}

export interface Health__Output {
  'unixMs': (number);
  'ranksConnected': (number);
  'messages': (number);
  'bytes': (number);
  'refused': (number);
  'stepsCompleted': (number);
  'stepsIncomplete': (number);
  'droppedByHooks': (number);
  'computeBackend': (string);
  'ranksGone': (number);
  'watchEventsDropped': (number);
}
