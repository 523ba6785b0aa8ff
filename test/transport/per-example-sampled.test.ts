// A rank whose Hello says per_example_sampled sends unbiased estimates of Σ_e |h_e|², which may fall below |h|²/b
// (no exact sum can): a real sidecar takes them, and still refuses the same sums from an exact rank.
import { status } from '@grpc/grpc-js';
import { firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { watchSidecar } from '../../src/remote/watch-client.js';
import { hello, perExampleStep, RankStream } from '../support/rank-client.js';
import { sidecarEachTest } from '../support/sidecar-each-test.js';

const t = sidecarEachTest();

// 3 layers, 16 examples: layer 1's sum 0.05 is below |h|²/16 = 1/16.
const NORMS = [4, 1, 2];
const BELOW = [1, 0.05, 0.5];
const EXACT = [1, 0.5, 0.5];

describe('per-example sums from a sampled rank', () => {
  it('are taken below the Cauchy–Schwarz bound and give a step estimate, even a negative one', async () => {
    const got = t.steps(2, 'sampled');
    const rank = new RankStream(t.client);
    rank.send(hello({ run: 'sampled', perExampleSampled: true }));
    for (const m of perExampleStep(0, NORMS, BELOW)) rank.send(m);
    // Every layer below: Σ|h_e|²/b < |h|² makes the step's tr(Σ) estimate negative, as an unbiased one may be.
    for (const m of perExampleStep(1, NORMS, [0.1, 0.01, 0.05])) rank.send(m);
    const stats = await got;
    expect(rank.refusals()).toEqual([]);
    expect(stats.map((s) => [s.step, s.source, s.skipped])).toEqual([
      [0, 'per-example', false],
      [1, 'per-example', false],
    ]);
    expect(stats[1]?.raw?.traceSigma).toBeLessThan(0);
    expect(Number.isFinite(stats[1]?.raw?.gradSqNorm)).toBe(true);
    // Said beside the source: in runs$, and to a dashboard watching from elsewhere (through Watch).
    expect((await firstValueFrom(t.sidecar.runs$)).find((r) => r.run === 'sampled')?.perExampleSampled).toBe(true);
    const remote = watchSidecar(t.sidecar.address, { retryMs: 50 });
    try {
      await expect.poll(() => firstValueFrom(remote.runs$).then((runs) => runs.find((r) => r.run === 'sampled')?.perExampleSampled), { timeout: 10_000 }).toBe(true);
    } finally {
      remote.close();
    }
    rank.end();
  });

  it('still refuses negative or non-finite sums', async () => {
    const got = t.steps(1, 'sampled-bad');
    const rank = new RankStream(t.client);
    rank.send(hello({ run: 'sampled-bad', perExampleSampled: true }));
    const shard = (sums: number[]) => ({ shard: { step: 0, microBatch: 0, examples: 16, sqNorms: { values: NORMS }, perExample: { sums } } });
    rank.send(shard([1, -0.05, 0.5]));
    rank.send(shard([1, Number.POSITIVE_INFINITY, 0.5]));
    for (const m of perExampleStep(0, NORMS, BELOW)) rank.send(m);
    expect((await got).map((s) => s.step)).toEqual([0]);
    await expect.poll(() => rank.refusals().length).toBe(2);
    expect(rank.refusals().map((r) => r.code)).toEqual([status.INVALID_ARGUMENT, status.INVALID_ARGUMENT]);
    expect(rank.refusals()[0]?.message).toMatch(/per_example.sums\[1\] \(layer 'fc1.bias'\) is negative/);
    expect(rank.refusals()[1]?.message).toMatch(/per_example.sums\[1\] \(layer 'fc1.bias'\) is Infinity/);
    rank.end();
  });

  it('are refused from an exact rank (Cauchy–Schwarz), which loses nothing else', async () => {
    const got = t.steps(2, 'exact');
    const rank = new RankStream(t.client);
    rank.send(hello({ run: 'exact' }));
    for (const m of perExampleStep(0, NORMS, BELOW)) rank.send(m);
    for (const m of perExampleStep(1, NORMS, EXACT)) rank.send(m);
    for (const m of perExampleStep(2, NORMS, EXACT)) rank.send(m);
    expect((await got).map((s) => s.step)).toEqual([1, 2]);
    await expect.poll(() => rank.refusals().length).toBeGreaterThanOrEqual(1);
    expect(rank.refusals()[0]?.code).toBe(status.INVALID_ARGUMENT);
    expect((await firstValueFrom(t.sidecar.runs$)).find((r) => r.run === 'exact')).not.toHaveProperty('perExampleSampled');
    expect(rank.refusals()[0]?.message).toMatch(/step 0 micro-batch 0: sq_norms\[1\] \(layer 'fc1.bias'\) = 1 exceeds examples × per_example.sums\[1\] = 16 × 0.05 = 0.8.*Cauchy–Schwarz/);
    rank.end();
  });
});
