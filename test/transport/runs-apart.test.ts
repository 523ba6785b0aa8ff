// Several runs on one sidecar stay apart: the same ranks and step numbers, interleaved message by message,
// give each run exactly the statistics it gets alone; one run's dead rank and restarts leave the other alone.
import { filter, firstValueFrom } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { startSidecar, type Sidecar } from '../../src/index.js';
import type { RankMessage } from '../../src/transport/generated/noisescope/v1/RankMessage.js';
import type { StepStats } from '../../src/types.js';
import { accumulationStep, connect, hello, RankStream } from '../support/rank-client.js';

const STEPS = 12;
const WORLD = 2;

/** Rank r's messages for one step of run `run` (each run and rank its own norms). */
function messages(run: 'a' | 'b', rank: number, step: number): RankMessage[] {
  const base = run === 'a' ? 1 : 7;
  const wobble = ((step * 5 + rank * 3) % 7) / 7;
  const micro = [
    [base * (4 + wobble), 1 + rank, 2 + wobble],
    [base * (5 - wobble), 1.5, 3 - wobble],
  ];
  const accumulated = [base * (6 + wobble), 2 + rank / 2, 3.5];
  return accumulationStep(step, micro, accumulated);
}

/** Every step of the runs given, each rank on its own stream, sent interleaved message by message. */
async function play(sidecar: Sidecar, runs: readonly ('a' | 'b')[], killed: { run: 'a' | 'b'; rank: number; after: number } | null = null) {
  const client = connect(sidecar.address);
  const seen: StepStats[] = [];
  const sub = sidecar.stats$.subscribe((s) => seen.push(s));
  const streams = new Map<string, RankStream>();
  for (const run of runs) {
    for (let rank = 0; rank < WORLD; rank++) {
      const stream = new RankStream(client);
      stream.send(hello({ run, rank, worldSize: WORLD, session: `${run}${rank}` }));
      streams.set(`${run}${rank}`, stream);
    }
  }
  for (let step = 0; step < STEPS; step++) {
    const queues = [...streams.keys()].map((key) => ({ key, queue: messages(key[0] as 'a' | 'b', Number(key[1]), step) }));
    for (let i = 0; queues.some((q) => i < q.queue.length); i++) {
      for (const { key, queue } of queues) {
        const stream = streams.get(key) as RankStream;
        const dead = killed && key === `${killed.run}${killed.rank}` && step > killed.after;
        if (!dead && i < queue.length) stream.send(queue[i] as RankMessage);
      }
    }
    if (killed && step === killed.after) streams.get(`${killed.run}${killed.rank}`)?.end();
  }
  for (const run of runs) {
    if (killed?.run === run) continue;
    await firstValueFrom(sidecar.stats$.pipe(filter((s) => s.run === run && s.step === STEPS - 1)));
  }
  sub.unsubscribe();
  for (const stream of streams.values()) stream.end();
  client.close();
  return seen;
}

const comparable = (stats: StepStats[], run: string) => stats.filter((s) => s.run === run).map(({ unixMs: _, ...rest }) => rest);

describe('several runs on one sidecar', () => {
  const sidecars: Sidecar[] = [];
  afterEach(async () => {
    for (const s of sidecars.splice(0)) await s.close();
  });
  const start = async (options: Parameters<typeof startSidecar>[0] = {}) => {
    const sidecar = await startSidecar({ port: 0, ...options });
    sidecars.push(sidecar);
    return sidecar;
  };

  it('two runs interleaved message by message get exactly the statistics each gets alone', async () => {
    const together = await play(await start(), ['a', 'b']);
    const aloneA = await play(await start(), ['a']);
    const aloneB = await play(await start(), ['b']);
    expect(comparable(together, 'a')).toEqual(comparable(aloneA, 'a'));
    expect(comparable(together, 'b')).toEqual(comparable(aloneB, 'b'));
    expect(comparable(together, 'a')).toHaveLength(STEPS);
    expect(comparable(together, 'a').every((s) => !s.skipped && s.ranks === WORLD)).toBe(true);
    // Different gradients, different estimates: nothing of one run leaked into the other.
    expect(comparable(together, 'a').at(-1)?.raw).not.toEqual(comparable(together, 'b').at(-1)?.raw);
  });

  it("one run's killed rank makes only that run's steps partial", async () => {
    const sidecar = await start({ partialStepTimeoutMs: 200 });
    const together = await play(sidecar, ['a', 'b'], { run: 'b', rank: 1, after: 3 });
    const aloneA = await play(await start(), ['a']);
    expect(comparable(together, 'a')).toEqual(comparable(aloneA, 'a'));
    const b = await firstValueFrom(sidecar.stats$.pipe(filter((s) => s.run === 'b' && s.step === STEPS - 1)));
    expect(b.skipped).toBe(true);
    expect(b.note).toMatch(/^skipped: partial: rank 1 of 2 /);
    const runs = await firstValueFrom(sidecar.runs$);
    expect(runs.map((r) => r.run).sort()).toEqual(['a', 'b']);
  });
});
