import { describe, expect, it } from 'vitest';
import { toBatchScales } from '../../src/ingest/to-batch-scales.js';
import { countDistinctX, fitBatchScales } from '../../src/stats/fit-batch-scales.js';
import { SeededRandom, gaussianGradients, simulateSyntheticStep } from '../../src/bench/synthetic-gradients.js';

function expectRelativelyClose(actual: number, expected: number, tolerance = 1e-12): void {
  expect(Math.abs(actual - expected)).toBeLessThanOrEqual(tolerance * Math.max(1, Math.abs(expected)));
}

describe('fitBatchScales', () => {
  it('with two batch sizes equals the paper’s two-batch formulas', () => {
    const rng = new SeededRandom(7);
    for (let trial = 0; trial < 50; trial++) {
      const bSmall = 1 + rng.int(64);
      const bBig = bSmall * (2 + rng.int(16));
      const gSmallSq = 10 * rng.uniform();
      const gBigSq = 10 * rng.uniform();
      const fit = fitBatchScales([
        { x: 1 / bSmall, y: gSmallSq, n: 1 + rng.int(8) },
        { x: 1 / bBig, y: gBigSq, n: 1 },
      ]);
      expect(fit).not.toBeNull();
      expectRelativelyClose(fit!.gradSqNorm, (bBig * gBigSq - bSmall * gSmallSq) / (bBig - bSmall), 1e-10);
      expectRelativelyClose(fit!.traceSigma, (gSmallSq - gBigSq) / (1 / bSmall - 1 / bBig), 1e-10);
    }
  });

  it('recovers a noiseless line exactly through three to six levels with any counts', () => {
    const rng = new SeededRandom(11);
    for (let trial = 0; trial < 50; trial++) {
      const gradSqNorm = rng.gaussian();
      const traceSigma = 100 * rng.uniform();
      const levels = 3 + rng.int(4);
      const scales = Array.from({ length: levels }, (_, i) => {
        const x = 1 / (2 ** i * (1 + rng.int(8)));
        return { x, y: gradSqNorm + traceSigma * x, n: 1 + rng.int(16) };
      });
      const fit = fitBatchScales(scales)!;
      expectRelativelyClose(fit.gradSqNorm, gradSqNorm, 1e-9);
      expectRelativelyClose(fit.traceSigma, traceSigma, 1e-9);
    }
  });

  it('weights the levels by n/x² rather than equally', () => {
    // Off-line points: equal weights would give a different line, so the weighting is pinned down.
    const scales = [
      { x: 1, y: 3, n: 1 },
      { x: 0.5, y: 1, n: 1 },
      { x: 0.25, y: 1, n: 1 },
    ];
    const w = scales.map((s) => s.n / (s.x * s.x));
    const sw = w.reduce((a, b) => a + b, 0);
    const xm = scales.reduce((a, s, i) => a + w[i]! * s.x, 0) / sw;
    const ym = scales.reduce((a, s, i) => a + w[i]! * s.y, 0) / sw;
    const slope =
      scales.reduce((a, s, i) => a + w[i]! * (s.x - xm) * (s.y - ym), 0) /
      scales.reduce((a, s, i) => a + w[i]! * (s.x - xm) ** 2, 0);
    const fit = fitBatchScales(scales)!;
    expectRelativelyClose(fit.traceSigma, slope);
    expectRelativelyClose(fit.gradSqNorm, ym - slope * xm);
  });

  it('is null without two distinct batch scales', () => {
    expect(fitBatchScales([])).toBeNull();
    expect(fitBatchScales([{ x: 0.25, y: 1, n: 4 }])).toBeNull();
    expect(fitBatchScales([{ x: 0.25, y: 1, n: 4 }, { x: 0.25, y: 2, n: 1 }])).toBeNull();
    expect(fitBatchScales([{ x: 0.25, y: 1, n: 4 }, { x: 0.5, y: 2, n: 0 }])).toBeNull();
    expect(countDistinctX([{ x: 0.25, y: 1, n: 4 }, { x: 0.25, y: 2, n: 1 }, { x: 0.5, y: 2, n: 1 }])).toBe(2);
  });

  it('passes through an exact level at x = 0 (the whole dataset, with the FPC)', () => {
    const fit = fitBatchScales([
      { x: 0.1, y: 5.3, n: 4 },
      { x: 0.02, y: 2.1, n: 2 },
      { x: 0, y: 1.5, n: 1 },
    ])!;
    expect(fit.gradSqNorm).toBeCloseTo(1.5, 6);
  });

  it('through toBatchScales, k equal micro-batches give the unbiased sample variance b/(k−1)·Σ|g_i − ḡ|²', () => {
    const rng = new SeededRandom(3);
    const source = gaussianGradients(rng, [
      { name: 'w', numel: 50, gradSqNorm: 1, bSimple: 30 },
      { name: 'b', numel: 20, gradSqNorm: 0.5, bSimple: 10 },
    ]);
    const b = 8;
    for (const k of [2, 4, 8]) {
      // Re-draw the same micro-batch means the simulator will use, to compute the sample variance directly.
      const seed = 100 + k;
      const means: Float64Array[][] = [];
      const probe = new SeededRandom(seed);
      for (let i = 0; i < k; i++) means.push(source.drawMean(probe, b));
      const step = simulateSyntheticStep(new SeededRandom(seed), source, { name: `k${k}`, microExamples: [Array(k).fill(b)], allReduce: false }, 0);
      const scales = toBatchScales(step, null);
      for (let l = 0; l < 2; l++) {
        const d = means[0]![l]!.length;
        let spread = 0;
        let meanSq = 0;
        for (let j = 0; j < d; j++) {
          let avg = 0;
          for (let i = 0; i < k; i++) avg += means[i]![l]![j]! / k;
          for (let i = 0; i < k; i++) spread += (means[i]![l]![j]! - avg) ** 2;
          meanSq += avg * avg;
        }
        const fit = fitBatchScales(scales[l]!)!;
        const traceSigma = (b / (k - 1)) * spread;
        expectRelativelyClose(fit.traceSigma, traceSigma, 1e-9);
        // And |G|² is the mean's squared norm less its expected noise tr(Σ)/(k·b).
        expectRelativelyClose(fit.gradSqNorm, meanSq - traceSigma / (k * b), 1e-9);
      }
    }
  });
});
