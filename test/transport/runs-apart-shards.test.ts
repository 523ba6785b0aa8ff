// FSDP ranks send their shard of the reduced gradient (StepEnd.reduced_is_shard): the sidecar sums the shards.
// An FSDP run and a DDP run of the same gradients, side by side on one sidecar, get the same statistics.
import { filter, firstValueFrom } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { startSidecar, type Sidecar } from '../../src/index.js';
import type { NoiseScopeClient } from '../../src/transport/generated/noisescope/v1/NoiseScope.js';
import type { RankMessage } from '../../src/transport/generated/noisescope/v1/RankMessage.js';
import type { StepStats } from '../../src/types.js';
import { accumulationStep, connect, hello, RankStream } from '../support/rank-client.js';

const STEPS = 8;

/** Rank r's step: two micro-batches, its accumulated norms, and the reduced gradient's norms split in shards. */
function figures(rank: number, step: number) {
  const w = ((step * 3 + rank) % 5) / 5;
  const micro = [
    [4 + w, 1, 2 + rank],
    [5 - w, 1.5, 3],
  ];
  const accumulated = [6 + w, 2, 4 + rank / 2];
  const reduced = [2.5 + step / 8, 0.75, 1.875]; // |the average over ranks|², the same on every rank
  // This rank's part of each layer's squared norm (disjoint slices); dyadic, so the shards sum exactly.
  const share = rank === 0 ? 0.25 : 0.75;
  return { micro, accumulated, reduced, shard: reduced.map((v) => v * share) };
}

function stepMessages(rank: number, step: number, sharded: boolean): RankMessage[] {
  const f = figures(rank, step);
  const [...messages] = accumulationStep(step, f.micro, f.accumulated);
  const end = messages.at(-1)?.stepEnd;
  messages[messages.length - 1] = {
    stepEnd: { ...end, reducedSqNorms: sharded ? f.shard : f.reduced, ...(sharded ? { reducedIsShard: true } : {}) },
  };
  return messages;
}

describe('FSDP reduced-gradient shards', () => {
  let sidecar: Sidecar | null = null;
  let client: NoiseScopeClient | null = null;
  afterEach(async () => {
    client?.close();
    await sidecar?.close();
  });

  it('are summed over ranks: an FSDP run gets the statistics of a DDP run of the same gradients', async () => {
    sidecar = await startSidecar({ port: 0 });
    client = connect(sidecar.address);
    const seen: StepStats[] = [];
    const sub = sidecar.stats$.subscribe((s) => seen.push(s));
    const streams = ['fsdp', 'ddp'].flatMap((run) =>
      [0, 1].map((rank) => {
        const stream = new RankStream(client as NoiseScopeClient);
        stream.send(hello({ run, rank, worldSize: 2 }));
        return { run, rank, stream };
      }),
    );
    for (let step = 0; step < STEPS; step++) {
      for (const { run, rank, stream } of streams) for (const m of stepMessages(rank, step, run === 'fsdp')) stream.send(m);
    }
    for (const run of ['fsdp', 'ddp']) await firstValueFrom(sidecar.stats$.pipe(filter((s) => s.run === run && s.step === STEPS - 1)));
    sub.unsubscribe();
    const of = (run: string) => seen.filter((s) => s.run === run).map(({ run: _, unixMs: __, ...rest }) => rest);
    expect(of('fsdp')).toHaveLength(STEPS);
    expect(of('fsdp').every((s) => s.levels === 3 && !s.skipped)).toBe(true);
    expect(of('fsdp')).toEqual(of('ddp'));
    for (const { stream } of streams) expect(stream.refusals()).toEqual([]);
  });

  it('a step whose ranks disagree on reduced_is_shard is excluded; the flag without norms is refused', async () => {
    sidecar = await startSidecar({ port: 0 });
    client = connect(sidecar.address);
    const rank0 = new RankStream(client);
    const rank1 = new RankStream(client);
    rank0.send(hello({ run: 'mixed', rank: 0, worldSize: 2 }));
    rank1.send(hello({ run: 'mixed', rank: 1, worldSize: 2 }));
    for (const m of stepMessages(0, 0, true)) rank0.send(m);
    for (const m of stepMessages(1, 0, false)) rank1.send(m);
    const [shard, end] = stepMessages(0, 1, true).slice(-2) as [RankMessage, RankMessage];
    rank0.send(stepMessages(0, 1, true)[0] as RankMessage);
    rank0.send(shard);
    rank0.send({ stepEnd: { ...end.stepEnd, reducedSqNorms: [] } });
    await expect.poll(() => rank1.refusals().length + rank0.refusals().length).toBe(2);
    expect(rank1.refusals()[0]?.message).toBe(
      'step 0 is inconsistent: rank 1 sent whole reduced norms but rank 0 a shard of the reduced gradient (reduced_is_shard); the step is excluded',
    );
    expect(rank0.refusals()[0]?.message).toBe('step 1: reduced_is_shard is set but reduced_sq_norms is empty');
    const health = await firstValueFrom(sidecar.health$.pipe(filter((h) => h.stepsIncomplete >= 1)));
    expect([health.stepsCompleted, health.stepsIncomplete]).toEqual([0, 1]);
    rank0.end();
    rank1.end();
  });
});
