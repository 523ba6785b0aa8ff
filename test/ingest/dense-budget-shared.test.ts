// The dense byte budget is one for the whole sidecar: two runs over real gRPC, each alone within the limit,
// together over it. The second run's chunk is refused naming the limit shared by all runs; the first run's
// step loses nothing, and once it completes (its memory freed) the second run's next step fits.
import { status } from '@grpc/grpc-js';
import { filter, firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { startSidecar } from '../../src/index.js';
import type { RankMessage } from '../../src/transport/generated/noisescope/v1/RankMessage.js';
import { microGradients } from '../support/dense-gradients.js';
import { connect, denseStep, hello, LAYERS, RankStream } from '../support/rank-client.js';

const SIZES = LAYERS.map((l) => l.numel);
/** K = 2: per run, the Gram matrices (3 layers × 4 × 8 bytes) and one open 4096-element block (2 × 4096 × 4 bytes). */
const GRAMS = 3 * 4 * 8;
const BLOCK = 2 * 4096 * 4;
/** Room for one run's block, not for two runs' blocks. */
const BUDGET = 40 * 1024;

/** A dense step range by range (both micro-batches of a range before the next), so one block is open at a time. */
function byRange(step: number): RankMessage[] {
  const order = (m: RankMessage) => (m.shard ? (m.shard.layer as number) * 1e6 + Number(m.shard.dense!.offset) + (m.shard.microBatch as number) / 10 : Infinity);
  return denseStep(step, microGradients(step + 3, 2, SIZES), { chunk: 4096 }).sort((x, y) => order(x) - order(y));
}

describe('the dense byte budget over all runs', () => {
  it('refuses a run whose chunk would take the sidecar past the shared limit, and loses nothing of the other run', async () => {
    const sidecar = await startSidecar({ port: 0, backend: 'reference', denseBudgetBytes: BUDGET, healthIntervalMs: 20 });
    const client = connect(sidecar.address);
    try {
      const a = new RankStream(client);
      a.send(hello({ run: 'a', mode: 'MODE_DENSE' }));
      const b = new RankStream(client);
      b.send(hello({ run: 'b', mode: 'MODE_DENSE' }));
      const stepsOf = (run: string) => firstValueFrom(sidecar.stats$.pipe(filter((s) => s.run === run)));

      // Run a opens its first block and holds it (its step is not over).
      const [aFirst, ...aRest] = byRange(0);
      a.send(aFirst!);
      await expect.poll(async () => (await firstValueFrom(sidecar.health$)).bytes, { timeout: 10_000 }).toBe(4096 * 4);

      // Run b alone would fit; beside a it does not.
      for (const m of byRange(0)) b.send(m);
      await expect.poll(() => b.refusals().length, { timeout: 10_000 }).toBe(2);
      const [refused, excluded] = b.refusals();
      expect(refused!.code).toBe(status.RESOURCE_EXHAUSTED);
      expect(refused!.message).toBe(
        `step 0 micro-batch 0 layer 0 offset 0: would hold ${2 * GRAMS + 2 * BLOCK} bytes of dense data for incomplete steps, over the limit of ${BUDGET} bytes shared by all runs ` +
          `(this run holds ${GRAMS} bytes; raise it with startSidecar({ denseBudgetBytes })): the step is excluded`,
      );
      expect(excluded!.message).toMatch(/^step 0 is excluded: a dense chunk was refused/);

      // Run a's step completes whole; then b's next step fits.
      const aStep = stepsOf('a');
      for (const m of aRest) a.send(m);
      expect((await aStep).step).toBe(0);
      expect([(await aStep).skipped, (await aStep).levels]).toEqual([false, 2]);
      const bStep = stepsOf('b');
      for (const m of byRange(1)) b.send(m);
      expect((await bStep).step).toBe(1);
      expect(a.refusals()).toEqual([]);
      expect(b.refusals()).toHaveLength(2);
      a.end();
      b.end();
    } finally {
      client.close();
      await sidecar.close();
    }
  });

  it('refuses a budget that is not a whole number of bytes ≥ 1, naming it', async () => {
    for (const denseBudgetBytes of [0, -1, 1.5, Number.NaN]) {
      await expect(startSidecar({ port: 0, backend: 'reference', denseBudgetBytes })).rejects.toThrow(`denseBudgetBytes must be a whole number of bytes ≥ 1, got ${denseBudgetBytes}`);
    }
  });
});
