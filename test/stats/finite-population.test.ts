import { describe, expect, it } from 'vitest';
import { toBatchScales } from '../../src/ingest/to-batch-scales.js';
import { RunEstimator } from '../../src/stats/run-estimator.js';
import { type SyntheticGradients, type SyntheticLayout, type SyntheticLayer, SeededRandom, finiteTrainingSet, simulateSyntheticStep } from '../../src/bench/synthetic-gradients.js';
import { rawSteps, relativeError } from './simulate.js';

// A training set of N = 256 examples whose B_simple (~200) is comparable to N, sampled
// without replacement within each step as an epoch-shuffling DataLoader does.
const N = 256;
const LAYERS: readonly SyntheticLayer[] = [
  { name: 'w1', numel: 600, gradSqNorm: 1, bSimple: 150 },
  { name: 'w2', numel: 300, gradSqNorm: 0.5, bSimple: 300 },
];
const ACCUMULATION: SyntheticLayout = { name: '4 micro-batches of 16', microExamples: [[16, 16, 16, 16]], allReduce: false };
const DATA_PARALLEL: SyntheticLayout = { name: '2 ranks × micro-batches 8, 24 + all-reduce', microExamples: [[8, 24], [8, 24]], allReduce: true };

function population(seed: number): { rng: SeededRandom; source: SyntheticGradients } {
  const rng = new SeededRandom(seed);
  return { rng, source: finiteTrainingSet(rng, LAYERS, N) };
}


describe('sampling without replacement from N examples, with the finite-population correction', () => {
  it('the truth really is in the regime where the correction matters', () => {
    const { source } = population(1);
    expect(source.truth.bSimple).toBeGreaterThan(0.5 * N);
  });

  for (const layout of [ACCUMULATION, DATA_PARALLEL]) {
    it(`${layout.name}: raw per-step |G|² and tr(Σ) are unbiased for the population’s values`, () => {
      const { rng, source } = population(2);
      const { gradSqNorm, traceSigma } = rawSteps(rng, source, layout, 2000, N);
      expect(Math.abs(gradSqNorm.mean - source.truth.gradSqNorm)).toBeLessThan(4 * gradSqNorm.standardError);
      expect(Math.abs(traceSigma.mean - source.truth.traceSigma)).toBeLessThan(4 * traceSigma.standardError);
      // Precise enough that a bias of a tenth of the no-FPC one would show.
      expect(4 * gradSqNorm.standardError).toBeLessThan((0.1 * source.truth.traceSigma) / N);
    });
  }

  it('without it, |G|² is biased by −tr(Σ)/N, as predicted', () => {
    const { rng, source } = population(3);
    const { gradSqNorm } = rawSteps(rng, source, ACCUMULATION, 2000, null);
    const bias = gradSqNorm.mean - source.truth.gradSqNorm;
    expect(Math.abs(bias)).toBeGreaterThan(10 * gradSqNorm.standardError);
    expect(Math.abs(bias + source.truth.traceSigma / N)).toBeLessThan(4 * gradSqNorm.standardError);
  });

  it('smoothed B_simple is within 5% with the correction and visibly wrong without it', () => {
    const { source } = population(4);
    const estimate = (datasetSize: number | null) => {
      const rng = new SeededRandom(5);
      // B_simple ≫ the micro-batch makes single steps very noisy: smooth over ~400 effective steps.
      const estimator = new RunEstimator(source.layers, { beta: 0.995, confidence: 0.95 });
      let smoothed = null;
      for (let s = 0; s < 1500; s++) smoothed = estimator.update(toBatchScales(simulateSyntheticStep(rng, source, ACCUMULATION, s), datasetSize))!.smoothed;
      return smoothed!;
    };
    const corrected = estimate(N);
    expect(relativeError(corrected.bSimple!, source.truth.bSimple)).toBeLessThan(0.05);
    expect(relativeError(corrected.traceSigma, source.truth.traceSigma)).toBeLessThan(0.05);
    expect(relativeError(corrected.gradSqNorm, source.truth.gradSqNorm)).toBeLessThan(0.05);
    const uncorrected = estimate(null);
    expect(relativeError(uncorrected.bSimple!, source.truth.bSimple)).toBeGreaterThan(0.5);
  });
});
