// The step limits of one run (open steps per rank, steps waiting for ranks, micro-batches per step) over real
// gRPC rank streams: each step a limit gives up is counted (health's incomplete steps), the run's first one per
// limit is reported on stats$ as a skipped step naming the limit, its value and how to raise it; a shard beyond
// the micro-batch limit is refused by name; the steps after go on.
import { status } from '@grpc/grpc-js';
import { filter, firstValueFrom, take, toArray } from 'rxjs';
import { describe, expect, it } from 'vitest';
import type { Sidecar, StepStats } from '../../src/index.js';
import { resolveLimits } from '../../src/transport/limits.js';
import { limitedSidecars } from '../support/limited-sidecar.js';
import { microGradients } from '../support/dense-gradients.js';
import { accumulationStep, denseStep, hello, LAYERS, RankStream } from '../support/rank-client.js';

const MICRO = [
  [4, 1, 2],
  [5, 1.2, 2.5],
];
const ACCUMULATED = [16, 4, 8];
const SIZES = LAYERS.map((l) => l.numel);
const REPORTED = "Reported once per run: later evictions are counted in health's incomplete steps";

const { start } = limitedSidecars();

const stepsOf = (s: Sidecar, run: string, n: number) => firstValueFrom(s.stats$.pipe(filter((x: StepStats) => x.run === run), take(n), toArray()));
const incomplete = async (s: Sidecar) => (await firstValueFrom(s.health$)).stepsIncomplete;

describe('step limits over gRPC', () => {
  it('gives up the oldest open step past openStepsPerRank, reports the first once, counts each', async () => {
    const { sidecar, client } = await start({ openStepsPerRank: 3 });
    const seen = stepsOf(sidecar, 'test-run', 2);
    const rank = new RankStream(client);
    rank.send(hello());
    // Steps 0..4 sent without their StepEnds: step 3 gives up step 0, step 4 gives up step 1.
    for (let step = 0; step < 5; step++) for (const m of accumulationStep(step, MICRO, ACCUMULATED).slice(0, -1)) rank.send(m);
    rank.send(accumulationStep(4, MICRO, ACCUMULATED).at(-1)!);
    const [evicted, completed] = await seen;
    expect(evicted).toMatchObject({ step: 0, skipped: true });
    expect(evicted!.note).toBe(
      'skipped: evicted: rank 0 had 3 steps open (shards sent, no StepEnd yet), so step 0, the oldest, was given up ' +
        `(limit open steps per rank = 3: raise it with startSidecar({ limits: { openStepsPerRank } })). ${REPORTED}`,
    );
    expect(completed).toMatchObject({ step: 4, skipped: false, microBatches: 2 });
    // Steps 0 and 1 evicted, 2 and 3 left open when step 4 ended: four incomplete, and one report only.
    await expect.poll(() => incomplete(sidecar), { timeout: 10_000 }).toBe(4);
    expect(rank.refusals()).toEqual([]);
    rank.end();
  });

  it('gives up the oldest step waiting for ranks past pendingSteps, reports the first once, and the rest complete', async () => {
    const { sidecar, client } = await start({ pendingSteps: 2 });
    const seen = stepsOf(sidecar, 'dp', 3);
    const ranks = [0, 1].map((rank) => {
      const s = new RankStream(client);
      s.send(hello({ run: 'dp', rank, worldSize: 2 }));
      return s;
    });
    // Rank 0 ends steps 0..3 before rank 1 ends any: step 2 gives up step 0, step 3 gives up step 1.
    for (let step = 0; step < 4; step++) for (const m of accumulationStep(step, MICRO, ACCUMULATED)) ranks[0]!.send(m);
    await expect.poll(() => incomplete(sidecar), { timeout: 10_000 }).toBe(2);
    for (let step = 2; step < 4; step++) for (const m of accumulationStep(step, MICRO, ACCUMULATED)) ranks[1]!.send(m);
    const [evicted, ...completed] = await seen;
    expect(evicted).toMatchObject({ step: 0, skipped: true });
    expect(evicted!.note).toBe(
      "skipped: evicted: run 'dp' had 2 steps that some but not all ranks ended, so step 0, the oldest, was given up " +
        `(limit steps waiting for ranks = 2: raise it with startSidecar({ limits: { pendingSteps } })). ${REPORTED}`,
    );
    expect(completed.map((s) => [s.step, s.skipped, s.ranks])).toEqual([
      [2, false, 2],
      [3, false, 2],
    ]);
    expect(await incomplete(sidecar)).toBe(2);
    for (const s of ranks) expect(s.refusals()).toEqual([]);
    for (const s of ranks) s.end();
  });

  it('gives up the oldest dense step a data-parallel run has open across its ranks past openStepsPerRank, reported once', async () => {
    const { sidecar, client } = await start({ openStepsPerRank: 2 }, { backend: 'reference' });
    const seen = stepsOf(sidecar, 'dp', 2);
    const ranks = [0, 1].map((rank) => {
      const s = new RankStream(client);
      s.send(hello({ run: 'dp', rank, worldSize: 2, mode: 'MODE_DENSE' }));
      return s;
    });
    const gradients = (step: number) => microGradients(step + 1, 2, SIZES);
    // Rank 0 is at step 0, rank 1 at steps 1 and 2: no rank has more than 2 open, the run has 3.
    ranks[0]!.send(denseStep(0, gradients(0))[0]!);
    for (const step of [1, 2]) ranks[1]!.send(denseStep(step, gradients(step))[0]!);
    const [evicted] = await firstValueFrom(sidecar.stats$.pipe(filter((s) => s.run === 'dp'), take(1), toArray()));
    expect(evicted).toMatchObject({ step: 0, skipped: true });
    expect(evicted!.note).toBe(
      "skipped: evicted: run 'dp' had 2 dense steps open across its ranks, so step 0, the oldest, was given up " +
        `(limit open steps per rank = 2: raise it with startSidecar({ limits: { openStepsPerRank } })). ${REPORTED}`,
    );
    // Step 1 completes whole on both ranks.
    for (const s of ranks) for (const m of denseStep(1, gradients(1)).slice(s === ranks[1] ? 1 : 0)) s.send(m);
    expect((await seen)[1]).toMatchObject({ step: 1, skipped: false, ranks: 2, levels: 3 });
    for (const s of ranks) s.end();
  });

  it('refuses a shard beyond microBatchesPerStep by name; the step goes on without it', async () => {
    const { sidecar, client } = await start({ microBatchesPerStep: 2 });
    const seen = stepsOf(sidecar, 'test-run', 1);
    const rank = new RankStream(client);
    rank.send(hello());
    const messages = accumulationStep(0, [...MICRO, [1, 1, 1]], ACCUMULATED);
    for (const m of messages) rank.send(m);
    await expect.poll(() => rank.refusals().length, { timeout: 10_000 }).toBeGreaterThanOrEqual(1);
    expect(rank.refusals()[0]).toMatchObject({
      code: status.RESOURCE_EXHAUSTED,
      message: 'step 0 micro-batch 2: micro-batch index 2 is beyond the micro-batches one step may have (limit micro-batches per step = 2: raise it with startSidecar({ limits: { microBatchesPerStep } }))',
    });
    // The step declared 3 micro-batches and one was refused: it is excluded, and the next step completes.
    for (const m of accumulationStep(1, MICRO, ACCUMULATED)) rank.send(m);
    expect((await seen)[0]).toMatchObject({ step: 1, skipped: false });
    rank.end();
  });

  it('refuses bad step limits by name', () => {
    expect(() => resolveLimits({ openStepsPerRank: 0 })).toThrow('limits.openStepsPerRank must be a whole number ≥ 1, got 0');
    expect(() => resolveLimits({ pendingSteps: 2.5 })).toThrow('limits.pendingSteps must be a whole number ≥ 1, got 2.5');
    expect(() => resolveLimits({ microBatchesPerStep: -1 })).toThrow('limits.microBatchesPerStep must be a whole number ≥ 1, got -1');
  });
});
