import { describe, expect, it } from 'vitest';
import { toBatchScales } from '../../src/ingest/to-batch-scales.js';
import { fitBatchScales } from '../../src/stats/fit-batch-scales.js';
import { RunEstimator } from '../../src/stats/run-estimator.js';
import { type SyntheticLayout, type SyntheticLayer, SeededRandom, gaussianGradients, simulateSyntheticStep } from '../../src/bench/synthetic-gradients.js';
import { meanAndStandardError } from './simulate.js';

const LAYERS: readonly SyntheticLayer[] = [
  { name: 'a', numel: 120, gradSqNorm: 1, bSimple: 50 },
  { name: 'b', numel: 80, gradSqNorm: 0.5, bSimple: 150 },
];

const LAYOUTS: readonly (SyntheticLayout & { perExample?: boolean })[] = [
  { name: '2 micro-batches of 8', microExamples: [[8, 8]], allReduce: false },
  { name: '4 micro-batches of 4, explicit per-example gradients', microExamples: [[4, 4, 4, 4]], allReduce: false, perExample: true },
  { name: '8 micro-batches of 2', microExamples: [Array(8).fill(2)], allReduce: false },
  { name: 'unequal micro-batches 2, 3, 8, 19', microExamples: [[2, 3, 8, 19]], allReduce: false },
  { name: '2 ranks × 4 micro-batches + all-reduce', microExamples: [[4, 4, 4, 4], [4, 4, 4, 4]], allReduce: true },
  { name: '3 ranks, 1 micro-batch each + all-reduce', microExamples: [[16], [16], [16]], allReduce: true },
  { name: 'loss summed, not averaged (c = 1)', microExamples: [[8, 8, 8, 8]], allReduce: false, lossScale: 1 },
];

describe('raw per-step estimates are unbiased', () => {
  for (const [i, layout] of LAYOUTS.entries()) {
    it(`${layout.name}: mean over 2000 steps within 4 standard errors of |G|² and tr(Σ)`, () => {
      const rng = new SeededRandom(60 + i);
      const source = gaussianGradients(rng, LAYERS, { perExample: layout.perExample ?? false });
      const estimator = new RunEstimator(source.layers, { beta: 0.9, confidence: 0.9 });
      const gradSqNorm: number[] = [];
      const traceSigma: number[] = [];
      const perLayer = LAYERS.map(() => ({ gradSqNorm: [] as number[], traceSigma: [] as number[] }));
      for (let s = 0; s < 2000; s++) {
        const scales = toBatchScales(simulateSyntheticStep(rng, source, layout, s), null);
        const update = estimator.update(scales)!;
        gradSqNorm.push(update.raw!.gradSqNorm);
        traceSigma.push(update.raw!.traceSigma);
        scales.forEach((levels, l) => {
          const fit = fitBatchScales(levels)!;
          perLayer[l]!.gradSqNorm.push(fit.gradSqNorm);
          perLayer[l]!.traceSigma.push(fit.traceSigma);
        });
      }
      // A common loss scale c multiplies every squared norm by (c·k)²: the optimizer's units.
      const units = layout.lossScale === undefined ? 1 : (layout.lossScale * layout.microExamples[0]!.length) ** 2;
      const checks = [
        { what: 'total', values: { gradSqNorm, traceSigma }, truth: source.truth },
        ...perLayer.map((values, l) => ({ what: LAYERS[l]!.name, values, truth: source.layerTruth[l]! })),
      ];
      for (const { what, values, truth } of checks) {
        const g = meanAndStandardError(values.gradSqNorm);
        const t = meanAndStandardError(values.traceSigma);
        expect(Math.abs(g.mean - units * truth.gradSqNorm), `${what} |G|²`).toBeLessThan(4 * g.standardError);
        expect(Math.abs(t.mean - units * truth.traceSigma), `${what} tr(Σ)`).toBeLessThan(4 * t.standardError);
        // Informative: the standard errors are small next to the values tested.
        expect(g.standardError, what).toBeLessThan(0.1 * units * truth.gradSqNorm);
        expect(t.standardError, what).toBeLessThan(0.05 * units * truth.traceSigma);
      }
    });
  }
});
