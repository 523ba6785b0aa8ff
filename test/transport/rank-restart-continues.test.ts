// A resumed training (torchrun elastic restart, watch(first_step=N)): new sessions continue the run's step numbers,
// and a step the old processes left half-ended is reported partial at the restart, not dropped silently.
import { filter, firstValueFrom } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { startSidecar, type Sidecar } from '../../src/index.js';
import type { NoiseScopeClient } from '../../src/transport/generated/noisescope/v1/NoiseScope.js';
import type { StepStats } from '../../src/types.js';
import { accumulationStep, connect, hello, RankStream } from '../support/rank-client.js';

const MICRO = [
  [4, 1, 2],
  [5, 1, 3],
];
const ACCUMULATED = [12, 3, 6];
const RUN = 'resumed';

describe('a restarted group resuming from a checkpoint', () => {
  let sidecar: Sidecar | null = null;
  let client: NoiseScopeClient | null = null;
  afterEach(async () => {
    client?.close();
    await sidecar?.close();
  });

  function attach(rank: number, session: string): RankStream {
    const stream = new RankStream(client as NoiseScopeClient);
    stream.send(hello({ run: RUN, worldSize: 2, rank, session }));
    return stream;
  }
  const step = (stream: RankStream, n: number) => {
    for (const m of accumulationStep(n, MICRO, ACCUMULATED)) stream.send(m);
  };

  it('reports the step the old ranks left half-ended as partial at the restart, then continues the numbering', async () => {
    // A timeout far beyond the test: only the restart can give step 2 up.
    sidecar = await startSidecar({ port: 0, partialStepTimeoutMs: 600_000 });
    client = connect(sidecar.address);
    const seen: StepStats[] = [];
    const sub = sidecar.stats$.subscribe((s) => s.run === RUN && seen.push(s));
    const old0 = attach(0, 'a0');
    const old1 = attach(1, 'a1');
    for (const n of [0, 1]) {
      step(old0, n);
      step(old1, n);
    }
    step(old0, 2); // rank 1 crashes before ending step 2
    await expect.poll(() => seen.length).toBe(2);
    old1.end();
    old0.end();

    // The new processes resume after the checkpoint of step 2 (rank 0 took it): steps 3 and 4.
    const new0 = attach(0, 'b0');
    const new1 = attach(1, 'b1');
    for (const n of [3, 4]) {
      step(new0, n);
      step(new1, n);
    }
    await firstValueFrom(sidecar.stats$.pipe(filter((s) => s.run === RUN && s.step === 4)));
    expect(seen.map((s) => [s.step, s.skipped, s.stepsMeasured])).toEqual([
      [0, false, 1],
      [1, false, 2],
      [2, true, 2],
      [3, false, 3],
      [4, false, 4],
    ]);
    expect(seen[2]?.note).toBe('skipped: partial: rank 0 restarted (a new process) before rank 1 of 2 ended step 2 — excluded');
    const health = await firstValueFrom(sidecar.health$.pipe(filter((h) => h.stepsCompleted >= 4)));
    expect([health.stepsCompleted, health.stepsIncomplete]).toEqual([4, 1]);
    expect([new0.refusals(), new1.refusals()]).toEqual([[], []]);
    sub.unsubscribe();
    new0.end();
    new1.end();
  });
});
