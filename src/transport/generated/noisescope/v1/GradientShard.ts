// Original file: proto/noisescope/v1/noisescope.proto

import type { PerExampleSqNorms as _noisescope_v1_PerExampleSqNorms, PerExampleSqNorms__Output as _noisescope_v1_PerExampleSqNorms__Output } from '../../noisescope/v1/PerExampleSqNorms.js';
import type { SquaredNorms as _noisescope_v1_SquaredNorms, SquaredNorms__Output as _noisescope_v1_SquaredNorms__Output } from '../../noisescope/v1/SquaredNorms.js';
import type { DenseChunk as _noisescope_v1_DenseChunk, DenseChunk__Output as _noisescope_v1_DenseChunk__Output } from '../../noisescope/v1/DenseChunk.js';
import type { Sketch as _noisescope_v1_Sketch, Sketch__Output as _noisescope_v1_Sketch__Output } from '../../noisescope/v1/Sketch.js';
import type { Long } from '@grpc/proto-loader';

export interface GradientShard {
  'step'?: (number | string | Long);
  'microBatch'?: (number);
  'examples'?: (number);
  'layer'?: (number);
  'perExample'?: (_noisescope_v1_PerExampleSqNorms | null);
  'microBatches'?: (number);
  'sqNorms'?: (_noisescope_v1_SquaredNorms | null);
  'dense'?: (_noisescope_v1_DenseChunk | null);
  'sketch'?: (_noisescope_v1_Sketch | null);
  'payload'?: "sqNorms"|"dense"|"sketch";
}

export interface GradientShard__Output {
  'step': (number);
  'microBatch': (number);
  'examples': (number);
  'layer': (number);
  'perExample': (_noisescope_v1_PerExampleSqNorms__Output | null);
  'microBatches': (number);
  'sqNorms'?: (_noisescope_v1_SquaredNorms__Output | null);
  'dense'?: (_noisescope_v1_DenseChunk__Output | null);
  'sketch'?: (_noisescope_v1_Sketch__Output | null);
  'payload'?: "sqNorms"|"dense"|"sketch";
}
