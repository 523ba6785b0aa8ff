// A rank whose Hello says per_example_sampled sends unbiased estimates of Σ_e |h_e|², which may fall below |h|²/b
// (no exact sum can): a real sidecar takes them, and still refuses the same sums from an exact rank.
import { status } from '@grpc/grpc-js';
import { render } from 'ink-testing-library';
import { createElement } from 'react';
import { filter, firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { formatRun } from '../../src/cli/format.js';
import { watchSidecar } from '../../src/remote/watch-client.js';
import type { RankMessage } from '../../src/transport/generated/noisescope/v1/RankMessage.js';
import type { RunInfo } from '../../src/types.js';
import { SourceLine } from '../../tui/components/status-lines.js';
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

/** perExampleStep, its shard's per_example marked sampled (as watch(per_example_sample="auto") does once exact sums cost too much). */
const sampledStep = (step: number, sums: number[]): RankMessage[] =>
  perExampleStep(step, NORMS, sums).map((m) => (m.shard ? { shard: { ...m.shard, perExample: { sums, sampled: true } } } : m));

describe('per-example sums from a shard that says sampled, on a rank whose Hello says exact', () => {
  it('are taken below the Cauchy–Schwarz bound and said sampled while the latest step is; the same sums unmarked are refused', async () => {
    const rank = new RankStream(t.client);
    rank.send(hello({ run: 'auto' }));
    const info = async () => (await firstValueFrom(t.sidecar.runs$)).find((r) => r.run === 'auto') as RunInfo;
    const label = (r: RunInfo) => render(createElement(SourceLine, { info: r, latest: null })).lastFrame() ?? '';
    // stats$ replays its latest: wait for the step by number.
    const stepOf = async (step: number, messages: RankMessage[]) => {
      const got = firstValueFrom(t.sidecar.stats$.pipe(filter((s) => s.run === 'auto' && s.step === step)));
      for (const m of messages) rank.send(m);
      return got;
    };

    const sampled = await stepOf(0, sampledStep(0, BELOW));
    expect(rank.refusals()).toEqual([]);
    expect([sampled.source, sampled.skipped]).toEqual(['per-example', false]);
    expect(Number.isFinite(sampled.raw?.traceSigma)).toBe(true);
    expect((await info()).perExampleSampled).toBe(true);
    expect(formatRun(await info())).toContain('source per-example (per-example sums sampled)');
    expect(label(await info())).toContain('Scales: per-example (sampled)');

    // An exact step follows: no longer said.
    await stepOf(1, perExampleStep(1, NORMS, EXACT));
    expect(await info()).not.toHaveProperty('perExampleSampled');
    expect(formatRun(await info())).not.toContain('sampled');
    expect(label(await info())).not.toContain('sampled');

    // The same below-bound sums without `sampled` are refused as before; the next step is taken.
    await stepOf(3, [...perExampleStep(2, NORMS, BELOW), ...perExampleStep(3, NORMS, EXACT)]);
    // (then its StepEnd: the step is excluded, its shard missing)
    await expect.poll(() => rank.refusals().length).toBeGreaterThanOrEqual(1);
    expect(rank.refusals()[0]?.code).toBe(status.INVALID_ARGUMENT);
    expect(rank.refusals()[0]?.message).toMatch(/step 2 micro-batch 0: sq_norms\[1\] \(layer 'fc1.bias'\) = 1 exceeds .*Cauchy–Schwarz/);
    rank.end();
  });
});
