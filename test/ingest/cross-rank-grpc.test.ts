// Data-parallel dense steps over real gRPC: two rank streams into one real sidecar, their chunks interleaved by
// the network, each step joined into one Gram. Against norms mode sent the same gradients' exact figures (with the
// all-reduced norm), and a noisy rank named on stats$.
import { describe, expect, it } from 'vitest';
import { rankDisagreements } from '../../src/stats/gradient-diversity.js';
import { microGradients, seeded } from '../support/dense-gradients.js';
import { accumulationStep, denseStep, hello, LAYERS, RankStream } from '../support/rank-client.js';
import { sidecarEachTest } from '../support/sidecar-each-test.js';

const SIZES = LAYERS.map((l) => l.numel);
const K = 2;
const WORLD = 2;
const STEPS = 4;

const sq = (v: ArrayLike<number>) => Array.prototype.reduce.call(v, (s: number, x: number) => s + x * x, 0) as number;
/** |Σ of the given gradients|² per layer, in float64. */
function sumSqNorms(gradients: readonly (readonly Float32Array[])[]): number[] {
  return SIZES.map((n, l) => {
    const sum = new Float64Array(n);
    for (const layers of gradients) layers[l]!.forEach((x, e) => (sum[e] = sum[e]! + x));
    return sq(sum);
  });
}

/** Step `step`'s gradients per rank; with `noisyRank`, that rank's are replaced by noise. */
function stepGradients(step: number, noisyRank = -1): Float32Array[][][] {
  const all = microGradients(step + 1, WORLD * K, SIZES, { signal: 1, noise: 0.5 });
  const noise = seeded(step + 77);
  return Array.from({ length: WORLD }, (_, r) =>
    all.slice(r * K, (r + 1) * K).map((layers) => (r === noisyRank ? layers.map((v) => v.map(() => 20 * (2 * noise() - 1))) : layers)),
  );
}

describe('data-parallel dense steps over gRPC', () => {
  const t = sidecarEachTest();

  it('join both ranks into the StepStats norms mode gives (3 levels), and name a noisy rank', async () => {
    const runs = { dense: t.steps(STEPS, 'dense'), norms: t.steps(STEPS, 'norms'), noisy: t.steps(STEPS, 'noisy') };
    const streams = ['dense', 'norms', 'noisy'].flatMap((run) =>
      Array.from({ length: WORLD }, (_, rank) => {
        const s = new RankStream(t.client);
        s.send(hello({ run, rank, worldSize: WORLD, mode: run === 'norms' ? 'MODE_NORMS' : 'MODE_DENSE' }));
        return { run, rank, s };
      }),
    );
    for (let step = 0; step < STEPS; step++) {
      const clean = stepGradients(step);
      const noisy = stepGradients(step, 1);
      const reduced = sumSqNorms(clean.flat()).map((v) => v / WORLD ** 2);
      for (const { run, rank, s } of streams) {
        const mine = (run === 'noisy' ? noisy : clean)[rank]!;
        if (run === 'norms') {
          const messages = accumulationStep(step, mine.map((layers) => layers.map(sq)), sumSqNorms(mine));
          messages.at(-1)!.stepEnd!.reducedSqNorms = reduced;
          messages.forEach((m) => s.send(m));
        } else {
          denseStep(step, mine).forEach((m) => s.send(m));
        }
      }
    }
    const [dense, norms, noisy] = [await runs.dense, await runs.norms, await runs.noisy];
    for (const { s } of streams) expect(s.refusals()).toEqual([]);
    expect(dense.map((d) => [d.source, d.levels, d.ranks, d.microBatches])).toEqual(norms.map((n) => [n.source, n.levels, n.ranks, n.microBatches]));
    expect(dense[0]!.levels).toBe(3);
    dense.forEach((d, i) => {
      for (const which of ['raw', 'smoothed'] as const) {
        for (const field of ['gradSqNorm', 'traceSigma'] as const) expect(d[which]![field] / norms[i]![which]![field] - 1).toBeCloseTo(0, 9);
      }
    });
    expect(dense.flatMap((d) => rankDisagreements(d.diversity))).toEqual([]);
    expect(noisy.map((d) => rankDisagreements(d.diversity).map((line) => line.slice(0, 16)))).toEqual(new Array(STEPS).fill(['rank 1 disagrees']));
    for (const { s } of streams) s.end();
  });
});
