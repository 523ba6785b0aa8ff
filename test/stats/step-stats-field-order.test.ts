// StepStats' field order is the order of serve's --json step lines and of the run log's step
// records, so building them without object spreads must keep it, with and without diversity.
import { from, lastValueFrom, toArray } from 'rxjs';
import { expect, it } from 'vitest';
import { SeededRandom, gaussianGradients, simulateSyntheticStep } from '../../src/bench/synthetic-gradients.js';
import type { IngestedStep } from '../../src/ingest/ingest.js';
import { estimateNoiseScale } from '../../src/stats/estimate-noise-scale.js';
import { DEFAULT_SMOOTHING } from '../../src/stats/smoothing-options.js';
import type { GradientDiversity } from '../../src/types.js';
import { ndjson } from '../../src/cli/format.js';

const HEAD = ['run', 'step', 'globalBatch', 'microBatches', 'ranks', 'lr', 'loss', 'unixMs', 'temperature', 'regimeStartStep', 'temperatureChange'];
const TAIL = ['source', 'levels', 'raw', 'smoothed', 'skipped', 'note', 'stepsMeasured'];

it('estimated, skipped and dense (diversity) steps keep StepStats fields in their order', async () => {
  const rng = new SeededRandom(3);
  const source = gaussianGradients(rng, [{ name: 'w', numel: 100, gradSqNorm: 1, bSimple: 50 }]);
  const layout = { run: 'r', worldSize: 1, layers: source.layers, uncoveredLayers: [], datasetSize: null, every: 1, mode: 'norms' as const, optimizer: 'SGD', policy: {} };
  const step = (i: number) => ({ ...simulateSyntheticStep(rng, source, { name: 'k4', microExamples: [[8, 8, 8, 8]], allReduce: false }, i), run: 'r', lr: 0.1 });
  const diversity: GradientDiversity = { rank: 0, microBatches: 4, cosines: [], layerCosines: [], meanCosine: [], disagreeing: [] };
  const estimated = step(0);
  const skipped = { ...step(1), skipReason: 'non-finite gradients' };
  const dense = step(2);
  const steps: IngestedStep[] = [
    { layout, step: estimated },
    { layout, step: skipped },
    { layout, step: { ...dense, ranks: dense.ranks.map((r) => ({ ...r, diversity })) } },
  ];
  const out = await lastValueFrom(from(steps).pipe(estimateNoiseScale(DEFAULT_SMOOTHING), toArray()));
  expect(out.map((u) => u.stats.skipped)).toEqual([false, true, false]);
  expect(out[2]!.stats.levels).toBeGreaterThan(0);
  expect(Object.keys(out[0]!.stats)).toEqual([...HEAD, ...TAIL]);
  expect(Object.keys(out[1]!.stats)).toEqual([...HEAD, ...TAIL]);
  expect(Object.keys(out[2]!.stats)).toEqual([...HEAD, 'diversity', ...TAIL]);
});

it('ndjson writes non-finite numbers as null, nested too, after the type', () => {
  expect(ndjson('step', { a: Number.NaN, b: [Infinity, -Infinity, 2], c: { d: 1.5, e: null } })).toBe(
    '{"type":"step","a":null,"b":[null,null,2],"c":{"d":1.5,"e":null}}',
  );
});
