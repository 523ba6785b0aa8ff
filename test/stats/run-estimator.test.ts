import { describe, expect, it } from 'vitest';
import { toBatchScales } from '../../src/ingest/to-batch-scales.js';
import { fitBatchScales } from '../../src/stats/fit-batch-scales.js';
import { DEFAULT_SMOOTHING, RunEstimator, type RunEstimatorUpdate } from '../../src/stats/run-estimator.js';
import { type SyntheticGradients, type SyntheticLayout, type SyntheticLayer, SeededRandom, gaussianGradients, simulateSyntheticStep } from '../../src/bench/synthetic-gradients.js';
import { relativeError } from './simulate.js';

// Four layers (1000 parameters) with different noise scales; whole-model B_simple ≈ 70.
const LAYERS: readonly SyntheticLayer[] = [
  { name: 'embed', numel: 300, gradSqNorm: 1, bSimple: 40 },
  { name: 'hidden', numel: 200, gradSqNorm: 0.5, bSimple: 120 },
  { name: 'out', numel: 400, gradSqNorm: 2, bSimple: 60 },
  { name: 'bias', numel: 100, gradSqNorm: 0.2, bSimple: 200 },
];

const LAYOUTS: readonly SyntheticLayout[] = [
  { name: '2 micro-batches of 32', microExamples: [[32, 32]], allReduce: false },
  { name: '4 micro-batches of 16', microExamples: [[16, 16, 16, 16]], allReduce: false },
  { name: '8 micro-batches of 8', microExamples: [Array(8).fill(8)], allReduce: false },
  { name: 'unequal micro-batches 4, 8, 16, 36', microExamples: [[4, 8, 16, 36]], allReduce: false },
  { name: '2 ranks × 4 micro-batches + all-reduce', microExamples: [[8, 8, 8, 8], [8, 8, 8, 8]], allReduce: true },
];

function run(source: SyntheticGradients, layout: SyntheticLayout, steps: number, rng: SeededRandom, beta = DEFAULT_SMOOTHING.beta): RunEstimatorUpdate {
  const estimator = new RunEstimator(source.layers, { beta, confidence: 0.95 });
  let last: RunEstimatorUpdate | null = null;
  for (let s = 0; s < steps; s++) last = estimator.update(toBatchScales(simulateSyntheticStep(rng, source, layout, s), null));
  return last!;
}

describe('RunEstimator accuracy on synthetic gradients (default smoothing)', () => {
  for (const [i, layout] of LAYOUTS.entries()) {
    it(`${layout.name}: smoothed B_simple, tr(Σ) and |G|² within 5% of the truth`, () => {
      const rng = new SeededRandom(20 + i);
      const source = gaussianGradients(rng, LAYERS);
      const update = run(source, layout, 1000, rng);
      const smoothed = update.smoothed!;
      expect(relativeError(smoothed.bSimple!, source.truth.bSimple)).toBeLessThan(0.05);
      expect(relativeError(smoothed.traceSigma, source.truth.traceSigma)).toBeLessThan(0.05);
      expect(relativeError(smoothed.gradSqNorm, source.truth.gradSqNorm)).toBeLessThan(0.05);
      expect(smoothed.trusted).toBe(true);
      expect(smoothed.interval!.low).toBeLessThanOrEqual(smoothed.bSimple!);
      expect(smoothed.interval!.high).toBeGreaterThanOrEqual(smoothed.bSimple!);
      expect(update.levels).toBe(layout.allReduce ? 3 : 2);
    });
  }

  it('per layer: every layer’s smoothed values within 5% with longer smoothing', () => {
    const rng = new SeededRandom(30);
    const source = gaussianGradients(rng, LAYERS);
    const update = run(source, LAYOUTS[4]!, 2500, rng, 0.998);
    expect(update.layers.map((l) => l.name)).toEqual(LAYERS.map((l) => l.name));
    update.layers.forEach((layer, l) => {
      const truth = source.layerTruth[l]!;
      expect(layer.numel).toBe(LAYERS[l]!.numel);
      expect(relativeError(layer.bSimple!, truth.bSimple), layer.name).toBeLessThan(0.05);
      expect(relativeError(layer.traceSigma, truth.traceSigma), layer.name).toBeLessThan(0.05);
      expect(relativeError(layer.gradSqNorm, truth.gradSqNorm), layer.name).toBeLessThan(0.05);
    });
  });
});

describe('RunEstimator bookkeeping', () => {
  it('fits the total through the per-level sums, which equals the sum of the layer fits', () => {
    const rng = new SeededRandom(40);
    const source = gaussianGradients(rng, LAYERS);
    const scales = toBatchScales(simulateSyntheticStep(rng, source, LAYOUTS[4]!, 0), null);
    const update = new RunEstimator(source.layers).update(scales)!;
    const layerFits = scales.map((s) => fitBatchScales(s)!);
    const sum = (f: (e: { gradSqNorm: number; traceSigma: number }) => number) => layerFits.reduce((a, e) => a + f(e), 0);
    expect(update.raw!.gradSqNorm).toBeCloseTo(sum((e) => e.gradSqNorm), 10);
    expect(update.raw!.traceSigma).toBeCloseTo(sum((e) => e.traceSigma), 8);
    // After one step the smoothed value is that step, with nothing to bound it yet.
    expect(update.smoothed!.gradSqNorm).toBeCloseTo(update.raw!.gradSqNorm, 12);
    expect(update.smoothed!.interval!.high).toBe(Number.POSITIVE_INFINITY);
    expect(update.smoothed!.trusted).toBe(false);
  });

  it('returns null, and learns nothing, from a step with a single batch scale', () => {
    const rng = new SeededRandom(41);
    const source = gaussianGradients(rng, LAYERS);
    const estimator = new RunEstimator(source.layers, DEFAULT_SMOOTHING);
    const single: SyntheticLayout = { name: 'one micro-batch', microExamples: [[64]], allReduce: false };
    expect(estimator.update(toBatchScales(simulateSyntheticStep(rng, source, single, 0), null))).toBeNull();
    expect(estimator.update([])).toBeNull();
    const next = estimator.update(toBatchScales(simulateSyntheticStep(rng, source, LAYOUTS[1]!, 1), null))!;
    expect(next.smoothed!.gradSqNorm).toBe(next.raw!.gradSqNorm);
  });

  it('skips a step with a non-finite norm instead of poisoning the average', () => {
    const rng = new SeededRandom(42);
    const source = gaussianGradients(rng, LAYERS);
    const estimator = new RunEstimator(source.layers, DEFAULT_SMOOTHING);
    const first = estimator.update(toBatchScales(simulateSyntheticStep(rng, source, LAYOUTS[1]!, 0), null))!;
    const bad = toBatchScales(simulateSyntheticStep(rng, source, LAYOUTS[1]!, 1), null).map((levels) =>
      levels.map((s, i) => (i === 0 ? { ...s, y: Number.NaN } : s)),
    );
    expect(estimator.update(bad)).toBeNull();
    const third = estimator.update(toBatchScales(simulateSyntheticStep(rng, source, LAYOUTS[1]!, 2), null))!;
    expect(Number.isFinite(third.smoothed!.gradSqNorm)).toBe(true);
    expect(third.smoothed!.gradSqNorm).not.toBe(first.smoothed!.gradSqNorm);
  });

  it('rejects scales that do not match its layers', () => {
    const estimator = new RunEstimator([{ name: 'a', numel: 1, kind: 'linear' }, { name: 'b', numel: 1, kind: 'linear' }]);
    const level = [{ x: 0.5, y: 1, n: 2 }, { x: 0.25, y: 0.6, n: 1 }];
    expect(() => estimator.update([level])).toThrow(/2 layers, got 1/);
    expect(() => estimator.update([level, [level[0]!]])).toThrow(RangeError);
    expect(() => estimator.update([level, [level[0]!, { x: 0.2, y: 0.6, n: 1 }]])).toThrow(/layer 1, level 1/);
  });

  it('forgets the run on reset', () => {
    const rng = new SeededRandom(43);
    const source = gaussianGradients(rng, LAYERS);
    const estimator = new RunEstimator(source.layers, { beta: 0.9, confidence: 0.9 });
    for (let s = 0; s < 20; s++) estimator.update(toBatchScales(simulateSyntheticStep(rng, source, LAYOUTS[1]!, s), null));
    estimator.reset();
    const scales = toBatchScales(simulateSyntheticStep(rng, source, LAYOUTS[1]!, 20), null);
    const after = estimator.update(scales)!;
    expect(after.smoothed!.gradSqNorm).toBe(after.raw!.gradSqNorm);
    expect(after.layers[0]!.traceSigma).toBe(fitBatchScales(scales[0]!)!.traceSigma);
    expect(after.smoothed!.interval!.high).toBe(Number.POSITIVE_INFINITY);
  });

  it('carries the interval’s spread on the smoothed estimate only', () => {
    const rng = new SeededRandom(44);
    const source = gaussianGradients(rng, LAYERS);
    const estimator = new RunEstimator(source.layers, { beta: 0.9, confidence: 0.9 });
    const first = estimator.update(toBatchScales(simulateSyntheticStep(rng, source, LAYOUTS[1]!, 0), null))!;
    expect(first.smoothed!.spread).toBeUndefined();
    const second = estimator.update(toBatchScales(simulateSyntheticStep(rng, source, LAYOUTS[1]!, 1), null))!;
    expect(second.smoothed!.spread).toEqual({ varGradSqNorm: expect.any(Number), varTraceSigma: expect.any(Number), covariance: expect.any(Number), df: expect.any(Number) });
    // Two steps: one degree of freedom.
    expect(second.smoothed!.spread!.df).toBeCloseTo(1, 12);
    expect(second.raw!.spread).toBeUndefined();
  });

  it('validates its options with a RangeError naming the bad value', () => {
    expect(() => new RunEstimator([], { beta: 1, confidence: 0.95 })).toThrow(new RangeError('smoothing beta must be in [0, 1), got 1'));
    expect(() => new RunEstimator([], { beta: 0.99, confidence: 1.5 })).toThrow(
      new RangeError('interval confidence must be in (0, 1), got 1.5'),
    );
    expect(DEFAULT_SMOOTHING).toEqual({ beta: 0.99, confidence: 0.95, temperatureTolerance: 0.2 });
  });
});

describe('RunEstimator says “not yet” while |G|² is indistinguishable from zero', () => {
  it('keeps the B_simple interval unbounded and untrusted when the true gradient is ~0', () => {
    const rng = new SeededRandom(50);
    // |G|² = 1e-6 next to tr(Σ) = 100: B_simple 1e8, far beyond any batch.
    const source = gaussianGradients(rng, [{ name: 'flat', numel: 300, gradSqNorm: 1e-6, bSimple: 1e8 }]);
    const estimator = new RunEstimator(source.layers, DEFAULT_SMOOTHING);
    let unbounded = 0;
    const steps = 300;
    for (let s = 0; s < steps; s++) {
      const update = estimator.update(toBatchScales(simulateSyntheticStep(rng, source, LAYOUTS[1]!, s), null))!;
      if (update.smoothed!.interval!.high === Number.POSITIVE_INFINITY) {
        unbounded++;
        expect(update.smoothed!.trusted).toBe(false);
      }
    }
    expect(unbounded).toBeGreaterThan(0.9 * steps);
  });
});
