// Dense mode end to end over real gRPC: a raw rank client sends each micro-batch's gradient in chunks;
// the sidecar's Gram matrices must give what norms mode gives for the same gradients.
import { describe, expect, it } from 'vitest';
import { formatStep } from '../../src/cli/format.js';
import type { StepStats } from '../../src/types.js';
import { microGradients } from '../support/dense-gradients.js';
import { denseStep, hello, LAYERS, normsStepOf, RankStream, type TestDtype } from '../support/rank-client.js';
import { sidecarEachTest } from '../support/sidecar-each-test.js';

const SIZES = LAYERS.map((l) => l.numel);
const K = 4;
const STEPS = 6;

/** Every figure the estimator produced, relative to another run's, as the worst relative difference. */
function worstRelativeDifference(a: readonly StepStats[], b: readonly StepStats[]): number {
  let worst = 0;
  a.forEach((s, i) => {
    const t = b[i]!;
    for (const which of ['raw', 'smoothed'] as const) {
      for (const field of ['gradSqNorm', 'traceSigma', 'bSimple'] as const) {
        const x = s[which]?.[field];
        const y = t[which]?.[field];
        expect(typeof x).toBe('number');
        worst = Math.max(worst, Math.abs((x as number) - (y as number)) / Math.abs(y as number));
      }
    }
  });
  return worst;
}

describe('dense shards', () => {
  const t = sidecarEachTest();

  it('give the same StepStats as norms mode on the same gradients (≤ 1e-6 relative), plus gradient diversity', async () => {
    const dense = t.steps(STEPS, 'dense-run');
    const norms = t.steps(STEPS, 'norms-run');
    const d = new RankStream(t.client);
    const n = new RankStream(t.client);
    d.send(hello({ run: 'dense-run', mode: 'MODE_DENSE' }));
    n.send(hello({ run: 'norms-run' }));
    for (let step = 0; step < STEPS; step++) {
      const gradients = microGradients(step + 1, K, SIZES, { signal: 0.3, noise: 1 });
      for (const m of denseStep(step, gradients)) d.send(m);
      for (const m of normsStepOf(step, gradients)) n.send(m);
    }
    const [denseStats, normsStats] = [await dense, await norms];
    expect(d.refusals()).toEqual([]);
    expect(denseStats.map((s) => [s.source, s.microBatches, s.levels])).toEqual(normsStats.map((s) => [s.source, s.microBatches, s.levels]));
    expect(worstRelativeDifference(denseStats, normsStats)).toBeLessThan(1e-6);
    expect(normsStats[0]!.diversity).toBeUndefined();
    const diversity = denseStats[0]!.diversity![0]!;
    expect(diversity).toMatchObject({ rank: 0, microBatches: K, disagreeing: [] });
    expect(diversity.layerCosines).toHaveLength(LAYERS.length);
    expect(diversity.cosines.filter((_, q) => q % (K + 1) === 0)).toEqual([1, 1, 1, 1]);
    d.end();
    n.end();
  });

  it.each<TestDtype>(['DTYPE_F16', 'DTYPE_BF16'])('read %s payloads as the same values sent in fp32', async (dtype) => {
    const half = t.steps(3, 'half-run');
    const full = t.steps(3, 'full-run');
    const h = new RankStream(t.client);
    const f = new RankStream(t.client);
    h.send(hello({ run: 'half-run', mode: 'MODE_DENSE' }));
    f.send(hello({ run: 'full-run', mode: 'MODE_DENSE' }));
    for (let step = 0; step < 3; step++) {
      const gradients = microGradients(10 + step, K, SIZES, { signal: 2, noise: 3, halfExact: true });
      for (const m of denseStep(step, gradients, { dtype, chunk: 777 })) h.send(m);
      for (const m of denseStep(step, gradients, { chunk: 4096 })) f.send(m);
    }
    const [halfStats, fullStats] = [await half, await full];
    expect(h.refusals()).toEqual([]);
    expect(worstRelativeDifference(halfStats, fullStats)).toBeLessThan(1e-12);
    h.end();
    f.end();
  });

  it('flags a corrupted micro-batch gradient as disagreeing, and only that one', async () => {
    const got = t.steps(2, 'corrupt-run');
    const rank = new RankStream(t.client);
    rank.send(hello({ run: 'corrupt-run', mode: 'MODE_DENSE' }));
    // The signal dominates: micro-batch gradients agree (cosine ≈ 0.8).
    const clean = microGradients(3, K, SIZES, { signal: 1, noise: 0.5 });
    const corrupted = microGradients(4, K, SIZES, { signal: 1, noise: 0.5 });
    corrupted[2] = corrupted[2]!.map((layer) => layer.map((x) => -x)); // e.g. a sign error on one micro-batch
    for (const m of denseStep(0, clean)) rank.send(m);
    for (const m of denseStep(1, corrupted)) rank.send(m);
    const [cleanStats, corruptStats] = await got;
    expect(cleanStats!.diversity![0]!.disagreeing).toEqual([]);
    const diversity = corruptStats!.diversity![0]!;
    expect(diversity.disagreeing).toEqual([2]);
    expect(diversity.meanCosine[2]).toBeLessThan(0);
    expect(Math.min(...diversity.meanCosine.filter((_, i) => i !== 2))).toBeGreaterThan(0);
    expect(formatStep(corruptStats!)).toMatch(/ {2}rank 0 micro-batch 2 disagrees \(mean cosine -0\.\d+\)$/);
    expect(formatStep(cleanStats!)).not.toMatch(/disagrees/);
    rank.end();
  });
});
