import { describe, expect, it } from 'vitest';
import { sourceOf } from '../../src/ingest/completed-step.js';
import { toBatchScales } from '../../src/ingest/to-batch-scales.js';
import { countDistinctX } from '../../src/stats/fit-batch-scales.js';
import { RunEstimator } from '../../src/stats/run-estimator.js';
import {
  type SyntheticGradients,
  type SyntheticLayer,
  type SyntheticLayout,
  SeededRandom,
  finiteTrainingSet,
  gaussianGradients,
  simulateSyntheticStep,
} from '../../src/bench/synthetic-gradients.js';
import { rawSteps, relativeError } from './simulate.js';

// The per-example source: batch-of-one vs the step's batch, on gradients with known |G|² and tr(Σ).
// B_simple ≈ 67, above the 32 examples of a step.
const LAYERS: readonly SyntheticLayer[] = [
  { name: 'a', numel: 120, gradSqNorm: 1, bSimple: 40 },
  { name: 'b', numel: 80, gradSqNorm: 0.5, bSimple: 120 },
];
const ONE_MICRO: SyntheticLayout = { name: '1 × 32, per-example', microExamples: [[32]], allReduce: false, perExample: true };
const ACCUMULATION: SyntheticLayout = { name: '4 × 8 accumulation + per-example', microExamples: [[8, 8, 8, 8]], allReduce: false, perExample: true };
const UNEQUAL: SyntheticLayout = { name: 'unequal 4, 12, 16 + per-example', microExamples: [[4, 12, 16]], allReduce: false, perExample: true };
const TWO_RANKS: SyntheticLayout = { name: '2 ranks × 16 + all-reduce + per-example', microExamples: [[16], [16]], allReduce: true, perExample: true };


// ~400 effective steps by default: single steps are noisy while B_simple exceeds the batch.
function smoothed(source: SyntheticGradients, layout: SyntheticLayout, seed: number, datasetSize: number | null, steps = 1500, beta = 0.995) {
  const rng = new SeededRandom(seed);
  const estimator = new RunEstimator(source.layers, { beta, confidence: 0.9 });
  let last = null;
  for (let s = 0; s < steps; s++) last = estimator.update(toBatchScales(simulateSyntheticStep(rng, source, layout, s), datasetSize));
  return last!;
}

describe('per-example sums as a batch scale', () => {
  it('a step with per-example sums reports the per-example source, with one more level than without', () => {
    const rng = new SeededRandom(1);
    const source = gaussianGradients(rng, LAYERS);
    const step = simulateSyntheticStep(rng, source, ACCUMULATION, 0);
    expect(sourceOf(step)).toBe('per-example');
    expect(countDistinctX(toBatchScales(step, null)[0]!)).toBe(3);
    const plain = simulateSyntheticStep(rng, source, { ...ACCUMULATION, perExample: false }, 1);
    expect(sourceOf(plain)).toBe('accumulation');
    expect(countDistinctX(toBatchScales(plain, null)[0]!)).toBe(2);
    const single = simulateSyntheticStep(rng, source, ONE_MICRO, 2);
    expect(countDistinctX(toBatchScales(single, null)[0]!)).toBe(2);
  });

  for (const layout of [ONE_MICRO, ACCUMULATION, UNEQUAL, TWO_RANKS]) {
    it(`${layout.name}: raw per-step |G|² and tr(Σ) are unbiased`, () => {
      const rng = new SeededRandom(2);
      const source = gaussianGradients(rng, LAYERS);
      const { gradSqNorm, traceSigma } = rawSteps(rng, source, layout, 3000, null);
      expect(Math.abs(gradSqNorm.mean - source.truth.gradSqNorm)).toBeLessThan(4 * gradSqNorm.standardError);
      expect(Math.abs(traceSigma.mean - source.truth.traceSigma)).toBeLessThan(4 * traceSigma.standardError);
      // Precise enough to tell a units error: 5% of |G|² is more than 4 standard errors.
      expect(4 * gradSqNorm.standardError).toBeLessThan(0.05 * source.truth.gradSqNorm);
    });

    it(`${layout.name}: smoothed B_simple within 5% of the truth`, () => {
      const source = gaussianGradients(new SeededRandom(3), LAYERS);
      const last = smoothed(source, layout, 4, null);
      expect(relativeError(last.smoothed!.bSimple!, source.truth.bSimple)).toBeLessThan(0.05);
      expect(last.smoothed!.trusted).toBe(true);
    });
  }

  it('explicit examples and the χ² shortcut give the same per-example estimate', () => {
    const fast = gaussianGradients(new SeededRandom(5), LAYERS);
    const explicit = gaussianGradients(new SeededRandom(5), LAYERS, { perExample: true });
    const a = rawSteps(new SeededRandom(6), fast, ONE_MICRO, 1500, null);
    const b = rawSteps(new SeededRandom(7), explicit, ONE_MICRO, 1500, null);
    const se = Math.hypot(a.traceSigma.standardError, b.traceSigma.standardError);
    expect(Math.abs(a.traceSigma.mean - b.traceSigma.mean)).toBeLessThan(4 * se);
    expect(Math.abs(b.traceSigma.mean - explicit.truth.traceSigma)).toBeLessThan(4 * b.traceSigma.standardError);
  });

  it('mean-vs-sum loss: contributions scaled by a common c give the same B_simple, |G|² scaled by c²', () => {
    const source = gaussianGradients(new SeededRandom(8), LAYERS);
    // Mean loss over the 32 examples (c = 1) against the summed loss (c = 32): the same draws.
    const mean = smoothed(source, { ...ONE_MICRO, lossScale: 1 }, 9, null, 200);
    const sum = smoothed(source, { ...ONE_MICRO, lossScale: 32 }, 9, null, 200);
    expect(relativeError(sum.smoothed!.bSimple!, mean.smoothed!.bSimple!)).toBeLessThan(1e-9);
    expect(relativeError(sum.smoothed!.gradSqNorm, 32 * 32 * mean.smoothed!.gradSqNorm)).toBeLessThan(1e-9);
    expect(relativeError(sum.layers[1]!.bSimple!, mean.layers[1]!.bSimple!)).toBeLessThan(1e-9);
  });
});

describe('per-example sums from a finite training set (sampling without replacement)', () => {
  // B_simple ≈ 200 against N = 256: the correction is large.
  const N = 256;
  const SET_LAYERS = LAYERS.map((l) => ({ ...l, bSimple: 3 * l.bSimple }));

  it('smoothed B_simple is within 5% with the correction and visibly wrong without it', () => {
    const source = finiteTrainingSet(new SeededRandom(10), SET_LAYERS, N);
    expect(source.truth.bSimple).toBeGreaterThan(0.5 * N);
    // B_simple ≈ 6× the batch: ~4000 effective steps bring the spread to ~2%.
    const corrected = smoothed(source, ONE_MICRO, 11, N, 8000, 0.99975);
    expect(relativeError(corrected.smoothed!.bSimple!, source.truth.bSimple)).toBeLessThan(0.05);
    const uncorrected = smoothed(source, ONE_MICRO, 11, null, 8000, 0.99975);
    expect(relativeError(uncorrected.smoothed!.bSimple!, source.truth.bSimple)).toBeGreaterThan(0.5);
  });

  it('raw |G|² is unbiased with the correction and biased by −tr(Σ)/N without it', () => {
    const source = finiteTrainingSet(new SeededRandom(12), SET_LAYERS, N);
    const corrected = rawSteps(new SeededRandom(13), source, ACCUMULATION, 3000, N);
    expect(Math.abs(corrected.gradSqNorm.mean - source.truth.gradSqNorm)).toBeLessThan(4 * corrected.gradSqNorm.standardError);
    expect(Math.abs(corrected.traceSigma.mean - source.truth.traceSigma)).toBeLessThan(4 * corrected.traceSigma.standardError);
    const { gradSqNorm } = rawSteps(new SeededRandom(13), source, ACCUMULATION, 3000, null);
    const bias = gradSqNorm.mean - source.truth.gradSqNorm;
    expect(Math.abs(bias)).toBeGreaterThan(10 * gradSqNorm.standardError);
    expect(Math.abs(bias + source.truth.traceSigma / N)).toBeLessThan(4 * gradSqNorm.standardError);
  });
});
