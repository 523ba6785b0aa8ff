// Original file: proto/noisescope/v1/noisescope.proto

import type { Source as _noisescope_v1_Source, Source__Output as _noisescope_v1_Source__Output } from '../../noisescope/v1/Source.js';
import type { Mode as _noisescope_v1_Mode, Mode__Output as _noisescope_v1_Mode__Output } from '../../noisescope/v1/Mode.js';
import type { Layer as _noisescope_v1_Layer, Layer__Output as _noisescope_v1_Layer__Output } from '../../noisescope/v1/Layer.js';
import type { BatchPolicy as _noisescope_v1_BatchPolicy, BatchPolicy__Output as _noisescope_v1_BatchPolicy__Output } from '../../noisescope/v1/BatchPolicy.js';
import type { SketchSpec as _noisescope_v1_SketchSpec, SketchSpec__Output as _noisescope_v1_SketchSpec__Output } from '../../noisescope/v1/SketchSpec.js';
import type { Long } from '@grpc/proto-loader';

export interface RunInfo {
  'run'?: (string);
  'worldSize'?: (number);
  'ranksConnected'?: (number);
  'source'?: (_noisescope_v1_Source);
  'mode'?: (_noisescope_v1_Mode);
  'layers'?: (number);
  'parameters'?: (number | string | Long);
  'datasetSize'?: (number | string | Long);
  'startedUnixMs'?: (number | string);
  'layerDetails'?: (_noisescope_v1_Layer)[];
  'every'?: (number);
  'optimizer'?: (string);
  'policy'?: (_noisescope_v1_BatchPolicy | null);
  'uncoveredLayers'?: (_noisescope_v1_Layer)[];
  'sketch'?: (_noisescope_v1_SketchSpec | null);
  'perExampleSampled'?: (boolean);
}

export interface RunInfo__Output {
  'run': (string);
  'worldSize': (number);
  'ranksConnected': (number);
  'source': (_noisescope_v1_Source__Output);
  'mode': (_noisescope_v1_Mode__Output);
  'layers': (number);
  'parameters': (number);
  'datasetSize': (number);
  'startedUnixMs': (number);
  'layerDetails': (_noisescope_v1_Layer__Output)[];
  'every': (number);
  'optimizer': (string);
  'policy': (_noisescope_v1_BatchPolicy__Output | null);
  'uncoveredLayers': (_noisescope_v1_Layer__Output)[];
  'sketch': (_noisescope_v1_SketchSpec__Output | null);
  'perExampleSampled': (boolean);
}
