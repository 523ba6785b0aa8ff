import { describe, expect, it } from 'vitest';
import { toBatchScales } from '../../src/ingest/to-batch-scales.js';
import { RunEstimator } from '../../src/stats/run-estimator.js';
import { type SyntheticGradients, type SyntheticLayout, type SyntheticLayer, SeededRandom, finiteTrainingSet, gaussianGradients, simulateSyntheticStep } from '../../src/bench/synthetic-gradients.js';

// Small models keep hundreds of independent replicates cheap; B_simple ≈ 67, above the micro-batch.
const LAYERS: readonly SyntheticLayer[] = [
  { name: 'a', numel: 120, gradSqNorm: 1, bSimple: 40 },
  { name: 'b', numel: 80, gradSqNorm: 0.5, bSimple: 120 },
];
const REPLICATES = 300;

interface Case {
  readonly name: string;
  readonly layout: SyntheticLayout;
  readonly beta: number;
  readonly confidence: number;
  readonly steps: number;
  /** A fixed finite training set (sampled without replacement, FPC applied), or fresh Gaussian draws. */
  readonly populationSize?: number;
}

const CASES: readonly Case[] = [
  { name: '4 micro-batches, beta 0.9 at steady state, 90%', layout: { name: 'k4', microExamples: [[8, 8, 8, 8]], allReduce: false }, beta: 0.9, confidence: 0.9, steps: 60 },
  {
    name: '2 ranks × 4 micro-batches + all-reduce, beta 0.9, 95%',
    layout: { name: 'ddp', microExamples: [[4, 4, 4, 4], [4, 4, 4, 4]], allReduce: true },
    beta: 0.9,
    confidence: 0.95,
    steps: 60,
  },
  { name: '4 micro-batches, beta 0.99 after only 6 steps (Student t matters), 90%', layout: { name: 'k4', microExamples: [[8, 8, 8, 8]], allReduce: false }, beta: 0.99, confidence: 0.9, steps: 6 },
  { name: '2 micro-batches, beta 0.99 after 20 steps (few effective steps), 90%', layout: { name: 'k2', microExamples: [[16, 16]], allReduce: false }, beta: 0.99, confidence: 0.9, steps: 20 },
  {
    name: 'unequal micro-batches from N = 256 without replacement (FPC), beta 0.9, 90%',
    layout: { name: 'fpc', microExamples: [[8, 16, 24, 16]], allReduce: false },
    beta: 0.9,
    confidence: 0.9,
    steps: 60,
    populationSize: 256,
  },
  {
    name: 'per-example sums, one micro-batch of 32, beta 0.9, 90%',
    layout: { name: 'pe', microExamples: [[32]], allReduce: false, perExample: true },
    beta: 0.9,
    confidence: 0.9,
    steps: 60,
  },
  {
    name: 'per-example sums with 4 micro-batches, beta 0.99 after 20 steps, 95%',
    layout: { name: 'pe-k4', microExamples: [[8, 8, 8, 8]], allReduce: false, perExample: true },
    beta: 0.99,
    confidence: 0.95,
    steps: 20,
  },
  {
    name: 'per-example sums on 2 ranks + all-reduce, beta 0.9, 90%',
    layout: { name: 'pe-ddp', microExamples: [[16], [16]], allReduce: true, perExample: true },
    beta: 0.9,
    confidence: 0.9,
    steps: 60,
  },
  {
    name: 'per-example sums from N = 256 without replacement (FPC), beta 0.9, 90%',
    layout: { name: 'pe-fpc', microExamples: [[32]], allReduce: false, perExample: true },
    beta: 0.9,
    confidence: 0.9,
    steps: 60,
    populationSize: 256,
  },
];

function coverage(c: Case): { covered: number; bounded: number } {
  // One fixed training set for the FPC case: coverage is over the sampling, given the data.
  const fixed = c.populationSize ? finiteTrainingSet(new SeededRandom(999), LAYERS, c.populationSize) : null;
  let covered = 0;
  let bounded = 0;
  for (let r = 0; r < REPLICATES; r++) {
    const rng = new SeededRandom(10_000 + r);
    const source: SyntheticGradients = fixed ?? gaussianGradients(rng, LAYERS);
    const estimator = new RunEstimator(source.layers, { beta: c.beta, confidence: c.confidence });
    let last = null;
    for (let s = 0; s < c.steps; s++) last = estimator.update(toBatchScales(simulateSyntheticStep(rng, source, c.layout, s), c.populationSize ?? null));
    const { low, high } = last!.smoothed!.interval!;
    if (low <= source.truth.bSimple && source.truth.bSimple <= high) covered++;
    if (Number.isFinite(high)) bounded++;
  }
  return { covered, bounded };
}

describe('the B_simple interval covers the truth at its nominal rate', () => {
  for (const c of CASES) {
    it(c.name, () => {
      const { covered, bounded } = coverage(c);
      // Binomial tolerance: three standard deviations of the observed rate over the replicates.
      const tolerance = 3 * Math.sqrt((c.confidence * (1 - c.confidence)) / REPLICATES);
      expect(Math.abs(covered / REPLICATES - c.confidence)).toBeLessThan(tolerance);
      // Coverage must come from bounded intervals, not from saying “not yet”.
      expect(bounded / REPLICATES).toBeGreaterThan(0.95);
    });
  }
});
