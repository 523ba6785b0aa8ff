// Each malformed dense input over real gRPC: a Refusal that says why, its step excluded, nothing else lost.
import { status } from '@grpc/grpc-js';
import { firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { startSidecar } from '../../src/index.js';
import type { RankMessage } from '../../src/transport/generated/noisescope/v1/RankMessage.js';
import { microGradients } from '../support/dense-gradients.js';
import { accumulationStep, connect, denseStep, hello, LAYERS, RankStream } from '../support/rank-client.js';
import { sidecarEachTest } from '../support/sidecar-each-test.js';

const SIZES = LAYERS.map((l) => l.numel);
/** K = 2 micro-batches, layers cut at 4096: fc1.weight in 2 chunks, fc1.bias and fc2.weight in 1 each. */
const good = (step: number) => denseStep(step, microGradients(step, 2, SIZES), { chunk: 4096 });
const shardAt = (messages: RankMessage[], i: number) => messages[i]!.shard!;

type Case = readonly [name: string, mutate: (m: RankMessage[]) => RankMessage[], chunkRefusal: [number, RegExp] | null, endRefusal: [number, RegExp]];
const EXCLUDED = (why: RegExp): [number, RegExp] => [status.INVALID_ARGUMENT, new RegExp(`is excluded: a dense chunk was refused \\(.*${why.source}`)];

const CASES: readonly Case[] = [
  ['offset beyond the layer', (m) => m.map((x, i) => (i === 1 ? { shard: { ...shardAt(m, 1), dense: { ...shardAt(m, 1).dense!, offset: 7000 } } } : x)),
    [status.INVALID_ARGUMENT, /layer 0 offset 7000: chunk \[7000, 11096\) is beyond layer 'fc1.weight' of 8192 elements/], EXCLUDED(/beyond layer/)],
  ['unknown dtype', (m) => m.map((x, i) => (i === 2 ? { shard: { ...shardAt(m, 2), dense: { ...shardAt(m, 2).dense!, dtype: 'DTYPE_UNSPECIFIED' } } } : x)),
    [status.INVALID_ARGUMENT, /unknown dtype DTYPE_UNSPECIFIED: send DTYPE_F32, DTYPE_F16 or DTYPE_BF16/], EXCLUDED(/unknown dtype/)],
  ['data not a whole number of values', (m) => m.map((x, i) => (i === 2 ? { shard: { ...shardAt(m, 2), dense: { ...shardAt(m, 2).dense!, data: Buffer.alloc(7) } } } : x)),
    [status.INVALID_ARGUMENT, /7 bytes of data is not a whole number of DTYPE_F32 values \(4 bytes each\)/], EXCLUDED(/not a whole number/)],
  ['a duplicate chunk', (m) => [m[0]!, ...m],
    [status.ALREADY_EXISTS, /gradient 0 already sent layer 0 offset 0/], [status.ALREADY_EXISTS, /is excluded: a dense chunk was refused/]],
  ['a micro-batch index ≥ K', (m) => m.map((x, i) => (i === 5 ? { shard: { ...shardAt(m, 5), microBatch: 2 } } : x)),
    [status.INVALID_ARGUMENT, /micro-batch index 2 is not below micro_batches 2/], EXCLUDED(/not below/)],
  ['K disagreeing between chunks', (m) => m.map((x, i) => (i === 3 ? { shard: { ...shardAt(m, 3), microBatches: 3 } } : x)),
    [status.INVALID_ARGUMENT, /micro_batches 3, but earlier chunks of this step said 2/], EXCLUDED(/earlier chunks/)],
  ['K missing', (m) => m.map((x, i) => (i === 0 ? { shard: { ...shardAt(m, 0), microBatches: 0 } } : x)),
    [status.INVALID_ARGUMENT, /micro_batches \(K, the micro-batches in this step on this rank\) is required for dense shards/], EXCLUDED(/is required/)],
  ['a non-finite value', (m) => m.map((x, i) => {
    if (i !== 6) return x;
    const values = new Float32Array(128).fill(0.5);
    values[17] = Number.NaN;
    return { shard: { ...shardAt(m, 6), dense: { ...shardAt(m, 6).dense!, data: Buffer.from(values.buffer) } } };
  }), null, [status.INVALID_ARGUMENT, /micro-batch 1 sent non-finite values in layer 'fc1.bias' \(report a non-finite gradient as StepEnd.skipped\): the step is excluded/]],
  ['missing chunks at step end', (m) => m.filter((_, i) => i !== 7),
    null, [status.FAILED_PRECONDITION, /dense chunks are missing: layer 'fc2.weight' has 0 of 1280 elements from every micro-batch: the step is excluded/]],
  ['a micro-batch that sent nothing', (m) => m.filter((x) => x.shard?.microBatch !== 1),
    null, [status.FAILED_PRECONDITION, /micro-batch\(es\) 1 of 2 sent no dense chunk: the step is excluded/]],
];

describe('bad dense input', () => {
  const t = sidecarEachTest();

  it.each(CASES)('%s: refused with a reason, its step excluded, the steps around it kept', async (_name, mutate, chunkRefusal, endRefusal) => {
    const got = t.steps(2);
    const rank = new RankStream(t.client);
    rank.send(hello({ mode: 'MODE_DENSE' }));
    for (const m of good(0)) rank.send(m);
    for (const m of mutate(good(1))) rank.send(m);
    for (const m of good(2)) rank.send(m);
    expect((await got).map((s) => s.step)).toEqual([0, 2]);
    const expected = [...(chunkRefusal ? [chunkRefusal] : []), endRefusal];
    await expect.poll(() => rank.refusals().length).toBe(expected.length);
    rank.refusals().forEach((r, i) => {
      expect(r.step).toBe(1);
      expect(r.code).toBe(expected[i]![0]);
      expect(r.message).toMatch(expected[i]![1]);
    });
    rank.end();
  });

  it('refuses a dense shard in a norms run on its own, and the norms step it named still completes', async () => {
    const got = t.steps(1);
    const rank = new RankStream(t.client);
    rank.send(hello());
    rank.send(good(0)[0]!);
    for (const m of accumulationStep(0, [[1, 1, 1], [2, 2, 2]], [5, 5, 5])) rank.send(m);
    expect((await got).map((s) => s.step)).toEqual([0]);
    expect(rank.refusals()).toEqual([
      { code: status.INVALID_ARGUMENT, step: 0, message: "step 0 micro-batch 0 layer 0 offset 0: run 'test-run' said mode norms in its Hello; dense shards need MODE_DENSE" },
    ]);
    rank.end();
  });
});

describe('the dense byte budget', () => {
  it('refuses a step that would hold more than the run’s limit, naming it; later steps that fit go on', async () => {
    // K = 2 Gram matrices (3 × 4 × 8 bytes) and one 4096-element block (2 × 4096 × 4) fit in 40 KiB; two blocks do not.
    const sidecar = await startSidecar({ port: 0, backend: 'reference', denseBudgetBytes: 40 * 1024 });
    const client = connect(sidecar.address);
    try {
      const rank = new RankStream(client);
      rank.send(hello({ mode: 'MODE_DENSE' }));
      const first = good(0);
      // Micro-batch 0's two fc1.weight chunks open two blocks at once: over the limit.
      for (const m of first) rank.send(m);
      await expect.poll(() => rank.refusals().length).toBe(2);
      expect(rank.refusals()[0]!.code).toBe(status.RESOURCE_EXHAUSTED);
      expect(rank.refusals()[0]!.message).toBe(
        "step 0 micro-batch 0 layer 0 offset 4096: would hold 65632 bytes of dense data for incomplete steps, over the limit of 40960 bytes shared by all runs (this run holds 32864 bytes; raise it with startSidecar({ denseBudgetBytes })): the step is excluded",
      );
      expect(rank.refusals()[1]!.message).toMatch(/^step 0 is excluded: a dense chunk was refused/);
      // Range by range (both micro-batches of a range before the next), one block is open at a time: it fits.
      const got = firstValueFrom(sidecar.stats$);
      const byRange = (m: RankMessage) => (m.shard ? (m.shard.layer as number) * 1e6 + Number(m.shard.dense!.offset) + (m.shard.microBatch as number) / 10 : Infinity);
      for (const m of good(1).sort((x, y) => byRange(x) - byRange(y))) rank.send(m);
      expect((await got).step).toBe(1);
      expect(rank.refusals()).toHaveLength(2);
      rank.end();
    } finally {
      client.close();
      await sidecar.close();
    }
  });
});
