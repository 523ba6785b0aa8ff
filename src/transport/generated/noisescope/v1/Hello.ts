// Original file: proto/noisescope/v1/noisescope.proto

import type { Layer as _noisescope_v1_Layer, Layer__Output as _noisescope_v1_Layer__Output } from '../../noisescope/v1/Layer.js';
import type { Source as _noisescope_v1_Source, Source__Output as _noisescope_v1_Source__Output } from '../../noisescope/v1/Source.js';
import type { Mode as _noisescope_v1_Mode, Mode__Output as _noisescope_v1_Mode__Output } from '../../noisescope/v1/Mode.js';
import type { BatchPolicy as _noisescope_v1_BatchPolicy, BatchPolicy__Output as _noisescope_v1_BatchPolicy__Output } from '../../noisescope/v1/BatchPolicy.js';
import type { SketchSpec as _noisescope_v1_SketchSpec, SketchSpec__Output as _noisescope_v1_SketchSpec__Output } from '../../noisescope/v1/SketchSpec.js';
import type { Long } from '@grpc/proto-loader';

export interface Hello {
  'protocolVersion'?: (number);
  'run'?: (string);
  'rank'?: (number);
  'worldSize'?: (number);
  'layers'?: (_noisescope_v1_Layer)[];
  'source'?: (_noisescope_v1_Source);
  'mode'?: (_noisescope_v1_Mode);
  'datasetSize'?: (number | string | Long);
  'every'?: (number);
  'hookVersion'?: (string);
  'framework'?: (string);
  'dropped'?: (number | string | Long);
  'session'?: (string);
  'optimizer'?: (string);
  'policy'?: (_noisescope_v1_BatchPolicy | null);
  'uncoveredLayers'?: (_noisescope_v1_Layer)[];
  'sketch'?: (_noisescope_v1_SketchSpec | null);
  'perExampleSampled'?: (boolean);
}

export interface Hello__Output {
  'protocolVersion': (number);
  'run': (string);
  'rank': (number);
  'worldSize': (number);
  'layers': (_noisescope_v1_Layer__Output)[];
  'source': (_noisescope_v1_Source__Output);
  'mode': (_noisescope_v1_Mode__Output);
  'datasetSize': (number);
  'every': (number);
  'hookVersion': (string);
  'framework': (string);
  'dropped': (number);
  'session': (string);
  'optimizer': (string);
  'policy': (_noisescope_v1_BatchPolicy__Output | null);
  'uncoveredLayers': (_noisescope_v1_Layer__Output)[];
  'sketch': (_noisescope_v1_SketchSpec__Output | null);
  'perExampleSampled': (boolean);
}
