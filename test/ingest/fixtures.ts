// Wire messages as proto-loader hands them to the step assembler, for its unit tests.
import type { RunLayout } from '../../src/ingest/run-layout.js';
import type { GradientShard__Output } from '../../src/transport/generated/noisescope/v1/GradientShard.js';
import type { StepEnd__Output } from '../../src/transport/generated/noisescope/v1/StepEnd.js';

/** Run 'r': layers a (10) and b (5). */
export const layout = (worldSize = 1): RunLayout => ({
  run: 'r',
  worldSize,
  layers: [
    { name: 'a', numel: 10, kind: 'Linear' },
    { name: 'b', numel: 5, kind: 'LayerNorm' },
  ],
  uncoveredLayers: [],
  datasetSize: null,
  every: 1,
  mode: 'norms',
  optimizer: null,
  policy: {},
});

/** A norms shard; `exampleSums` adds per_example. */
export const shard = (step: number, microBatch: number, values = [1, 2], examples = 8, exampleSums: number[] | null = null): GradientShard__Output => ({
  step,
  microBatch,
  examples,
  layer: 0,
  payload: 'sqNorms',
  sqNorms: { values },
  perExample: exampleSums ? { sums: exampleSums } : null,
});

/** A step end after `microBatches` shards of 8 examples. */
export const end = (step: number, microBatches: number, extra: Partial<StepEnd__Output> = {}): StepEnd__Output => ({
  step,
  microBatches,
  localExamples: 8 * microBatches,
  globalExamples: 0,
  accumulatedSqNorms: [3, 4],
  reducedSqNorms: [],
  lr: 0.1,
  loss: Number.NaN,
  skipped: false,
  skipReason: '',
  unixMs: 1,
  ...extra,
});
