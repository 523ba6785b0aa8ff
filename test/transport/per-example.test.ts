// The per-example source over real gRPC: a raw rank client (as any hook would speak the proto) against a real sidecar.
import { status } from '@grpc/grpc-js';
import { firstValueFrom, from, lastValueFrom, toArray } from 'rxjs';
import { describe, expect, it } from 'vitest';
import type { IngestedStep } from '../../src/ingest/ingest.js';
import type { RunLayout } from '../../src/ingest/run-layout.js';
import { watchSidecar } from '../../src/remote/watch-client.js';
import { estimateNoiseScale } from '../../src/stats/estimate-noise-scale.js';
import { DEFAULT_SMOOTHING } from '../../src/stats/run-estimator.js';
import type { RunEvent__Output } from '../../src/transport/generated/noisescope/v1/RunEvent.js';
import type { StepStats } from '../../src/types.js';
import { accumulationStep, hello, perExampleStep, RankStream } from '../support/rank-client.js';
import { sidecarEachTest } from '../support/sidecar-each-test.js';
import { SyntheticRun } from '../support/synthetic-run.js';

const UNCOVERED = [
  { name: 'attn.in_proj_weight', numel: 192, kind: 'MultiheadAttention' },
  { name: 'pos_embedding', numel: 64, kind: 'Parameter' },
];

const t = sidecarEachTest();
const steps = t.steps;

/** What an estimate depends on, without the wall clock. */
const estimateOf = (s: StepStats) => ({
  step: s.step,
  source: s.source,
  levels: s.levels,
  raw: s.raw,
  smoothed: s.smoothed,
  stepsMeasured: s.stepsMeasured,
  note: s.note,
  globalBatch: s.globalBatch,
  microBatches: s.microBatches,
});

describe('the per-example source over gRPC', () => {
  it('gives the same StepStats as the in-process computation on the same steps', async () => {
    const run = new SyntheticRun({ run: 'pe', bSimple: 80, microExamples: [[32]], seed: 3, perExample: true, uncoveredLayers: UNCOVERED });
    const count = 40;
    const got = steps(count, 'pe');
    const rank = new RankStream(t.client);
    rank.send(run.hello(0));
    for (let step = 0; step < count; step++) for (const m of run.messages(step, 0)) rank.send(m);
    const overTheWire = await got;
    expect(rank.refusals()).toEqual([]);

    const layout: RunLayout = {
      run: 'pe',
      worldSize: 1,
      layers: (await firstValueFrom(t.sidecar.runs$)).find((r) => r.run === 'pe')!.layers,
      uncoveredLayers: UNCOVERED,
      datasetSize: null,
      every: 1,
      mode: 'norms',
      optimizer: 'SGD',
      policy: {},
    };
    const ingested = run.steps.map((step): IngestedStep => ({ layout, step: { ...step, run: 'pe', lr: 0.1 } }));
    const inProcess = await lastValueFrom(from(ingested).pipe(estimateNoiseScale(DEFAULT_SMOOTHING), toArray()));
    expect(overTheWire.map(estimateOf)).toEqual(inProcess.map((u) => estimateOf(u.stats)));
    expect(overTheWire.at(-1)).toMatchObject({ source: 'per-example', levels: 2, microBatches: 1, ranks: 1, skipped: false });
    expect(overTheWire.at(-1)?.smoothed?.bSimple).toEqual(expect.any(Number));
  });

  it('refuses malformed per-example sums with a status that says why, and loses nothing else', async () => {
    const got = steps(3, 'test-run');
    const rank = new RankStream(t.client);
    rank.send(hello());
    // 3 layers, 16 examples: sq_norms may be at most 16 × the per-example sums.
    const norms = [4, 1, 2];
    const sums = [1, 0.5, 0.5];
    for (const m of perExampleStep(0, norms, sums)) rank.send(m);
    const shard = (perExampleSums: number[]) => ({ shard: { step: 1, microBatch: 0, examples: 16, sqNorms: { values: norms }, perExample: { sums: perExampleSums } } });
    rank.send(shard([1, 0.5]));
    rank.send(shard([1, Number.NaN, 0.5]));
    rank.send(shard([1, 0.5, -0.5]));
    rank.send(shard([1, 0.05, 0.5])); // fc1.bias: 1 > 16 × 0.05
    // Step 1 is still whole after all that.
    for (const m of perExampleStep(1, norms, sums)) rank.send(m);
    // Step 2 mixes a shard with per-example sums and one without: refused as inconsistent, excluded.
    const [withSums] = perExampleStep(2, norms, sums);
    const [withoutSums] = accumulationStep(2, [norms], norms);
    rank.send(withSums!);
    rank.send({ shard: { ...withoutSums!.shard, microBatch: 1 } });
    rank.send(accumulationStep(2, [norms, norms], norms).at(-1)!);
    for (const m of perExampleStep(3, norms, sums)) rank.send(m);

    const accepted = await got;
    expect(accepted.map((s) => [s.step, s.source])).toEqual([
      [0, 'per-example'],
      [1, 'per-example'],
      [3, 'per-example'],
    ]);
    await expect.poll(() => rank.refusals().length).toBe(5);
    const refusals = rank.refusals();
    expect(refusals.map((r) => r.code)).toEqual(Array(5).fill(status.INVALID_ARGUMENT));
    const messages = refusals.map((r) => r.message);
    expect(messages[0]).toMatch(/step 1 micro-batch 0: per_example.sums has 2 values; run 'test-run' declared 3 layers/);
    expect(messages[1]).toMatch(/per_example.sums\[1\] \(layer 'fc1.bias'\) is NaN/);
    expect(messages[2]).toMatch(/per_example.sums\[2\] \(layer 'fc2.weight'\) is negative/);
    expect(messages[3]).toMatch(/sq_norms\[1\] \(layer 'fc1.bias'\) = 1 exceeds examples × per_example.sums\[1\] = 16 × 0.05 = 0.8.*Cauchy–Schwarz/);
    expect(messages[4]).toBe('step 2 is inconsistent: micro-batch shard(s) 0 carry per_example and 1 do not; the step is excluded');
    await expect.poll(async () => (await firstValueFrom(t.sidecar.health$)).stepsIncomplete).toBe(1);
    rank.end();
  });

  it('brings uncovered layers to RunInfo, to Watch and to a watching client', async () => {
    const run = new SyntheticRun({ run: 'covered', bSimple: 50, microExamples: [[16]], seed: 5, perExample: true, uncoveredLayers: UNCOVERED });
    const remote = watchSidecar(t.sidecar.address, { retryMs: 50 });
    try {
      const got = steps(1, 'covered');
      const rank = new RankStream(t.client);
      rank.send(run.hello(0));
      for (const m of run.messages(0, 0)) rank.send(m);
      await got;
      const local = (await firstValueFrom(t.sidecar.runs$)).find((r) => r.run === 'covered');
      expect(local).toMatchObject({ source: 'per-example', parameters: 256, uncoveredLayers: UNCOVERED });

      const events: RunEvent__Output[] = [];
      const call = t.client.Watch({ run: 'covered' });
      call.on('data', (e: RunEvent__Output) => events.push(e));
      call.on('error', () => {});
      await expect.poll(() => events.length).toBeGreaterThanOrEqual(1);
      expect(events[0]?.runStarted?.uncoveredLayers).toEqual(UNCOVERED);
      call.cancel();

      await expect.poll(() => firstValueFrom(remote.runs$).then((runs) => runs.find((r) => r.run === 'covered')?.source), { timeout: 10_000 }).toBe('per-example');
      const far = (await firstValueFrom(remote.runs$)).find((r) => r.run === 'covered');
      expect(far).toEqual({ ...local, ranksConnected: far?.ranksConnected, ended: far?.ended });
      expect(far?.uncoveredLayers).toEqual(UNCOVERED);
      rank.end();
    } finally {
      remote.close();
    }
  });
});
