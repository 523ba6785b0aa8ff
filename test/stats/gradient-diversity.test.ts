import { describe, expect, it } from 'vitest';
import { stepStatsFromWire } from '../../src/remote/from-wire.js';
import { DISAGREEMENT, gradientDiversity } from '../../src/stats/gradient-diversity.js';
import { stepStatsToWire } from '../../src/transport/to-wire.js';
import type { StepStats } from '../../src/types.js';

/** The K×K Gram of explicit vectors. */
function gramOf(vectors: number[][]): Float64Array {
  const k = vectors.length;
  const gram = new Float64Array(k * k);
  for (let i = 0; i < k; i++) for (let j = 0; j < k; j++) gram[i * k + j] = vectors[i]!.reduce((s, x, e) => s + x * vectors[j]![e]!, 0);
  return gram;
}

describe('gradient diversity', () => {
  it('gives cosines of the whole model from the summed layer Grams, and per layer', () => {
    // Layer 0: g0 = (1, 0), g1 = (0, 1); layer 1: g0 = (1), g1 = (1). Whole model: (1,0,1)·(0,1,1) = 1 / (√2·√2).
    const d = gradientDiversity(3, [gramOf([[1, 0], [0, 1]]), gramOf([[1], [1]])], 2);
    expect(d).toMatchObject({ rank: 3, microBatches: 2, disagreeing: [] });
    expect(d.cosines).toEqual([1, 0.5, 0.5, 1].map((c) => expect.closeTo(c, 12)));
    expect(d.layerCosines).toEqual([[1, 0, 0, 1], [1, 1, 1, 1]]);
    expect(d.meanCosine).toEqual([expect.closeTo(0.5, 12), expect.closeTo(0.5, 12)]);
  });

  it(`flags the one whose mean cosine is below ${DISAGREEMENT.ratio}× the others' mutual agreement`, () => {
    // Three near-parallel gradients and one orthogonal to them.
    const vectors = [[1, 0.1, 0], [1, -0.1, 0], [1, 0, 0.1], [0, 0, 1]];
    const d = gradientDiversity(0, [gramOf(vectors)], 4);
    expect(d.disagreeing).toEqual([3]);
  });

  it('flags nothing when the others barely agree (noise-dominated), nor for K = 2', () => {
    const orthogonal = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0.1, -1]];
    expect(gradientDiversity(0, [gramOf(orthogonal)], 4).disagreeing).toEqual([]);
    expect(gradientDiversity(0, [gramOf([[1, 0], [-1, 0]])], 2).disagreeing).toEqual([]);
  });

  it('says NaN for a zero gradient, which has no direction, and never flags it', () => {
    const d = gradientDiversity(0, [gramOf([[1, 0], [1, 0.1], [0, 0]])], 3);
    expect(d.cosines[2 * 3 + 0]).toBeNaN();
    expect(d.disagreeing).toEqual([]);
  });

  it('crosses the wire to a Watch client unchanged, and stays absent for norms steps', () => {
    const base: StepStats = {
      run: 'r', step: 1, source: 'accumulation', globalBatch: 64, microBatches: 2, ranks: 1, levels: 2, raw: null, smoothed: null, lr: 0.1, loss: null,
      skipped: false, note: null, unixMs: 5, stepsMeasured: 1, temperature: 0.1 / 64, regimeStartStep: 0, temperatureChange: null,
    };
    const diversity = [{ rank: 0, microBatches: 2, cosines: [1, 0.25, 0.25, 1], layerCosines: [[1, 0.5, 0.5, 1]], meanCosine: [0.25, 0.25], disagreeing: [] }];
    expect(stepStatsFromWire(stepStatsToWire({ ...base, diversity }))).toEqual({ ...base, diversity });
    expect(stepStatsFromWire(stepStatsToWire(base))).toEqual(base);
  });
});
