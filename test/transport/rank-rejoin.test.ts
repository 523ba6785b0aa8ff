// Ranks that leave without Goodbye: declared gone once after the partial-step timeout (later steps are then
// excluded at once, not each after the timeout); a restarted rank (a new session) or a reconnection rejoins.
import { filter, firstValueFrom } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { startSidecar, type Sidecar } from '../../src/index.js';
import type { NoiseScopeClient } from '../../src/transport/generated/noisescope/v1/NoiseScope.js';
import type { StepStats } from '../../src/types.js';
import { cliEachTest } from '../support/cli-process.js';
import { accumulationStep, connect, hello, RankStream } from '../support/rank-client.js';

const MICRO = [
  [4, 1, 2],
  [5, 1, 3],
];
const ACCUMULATED = [12, 3, 6];
const RUN = 'elastic';

describe('ranks that leave and rejoin', () => {
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
  const stepStats = (n: number, after = 0) =>
    firstValueFrom((sidecar as Sidecar).stats$.pipe(filter((s) => s.run === RUN && s.step === n && s.stepsMeasured >= after)));
  const connected = (ranks: number) =>
    firstValueFrom((sidecar as Sidecar).runs$.pipe(filter((runs) => runs.some((r) => r.run === RUN && r.ranksConnected === ranks))));

  it('declares a rank gone once, excludes later steps at once, and counts a restarted rank again', async () => {
    sidecar = await startSidecar({ port: 0, healthIntervalMs: 20, partialStepTimeoutMs: 300 });
    client = connect(sidecar.address);
    const seen: StepStats[] = [];
    const sub = sidecar.stats$.subscribe((s) => s.run === RUN && seen.push(s));
    const rank0 = attach(0, 'a0');
    let rank1 = attach(1, 'a1');
    for (const n of [0, 1]) {
      step(rank0, n);
      step(rank1, n);
    }
    const measured = (await stepStats(1)).stepsMeasured;
    rank1.end(); // no Goodbye: killed
    await connected(1);
    step(rank0, 2); // waits out the timeout, as any step a rank did not end; meanwhile rank 1 is declared gone
    expect((await stepStats(2)).note).toBe('skipped: partial: rank 1 of 2 never ended step 2 within 0.3 s — excluded');
    step(rank0, 3);
    step(rank0, 4);
    const [three, four] = [await stepStats(3), await stepStats(4)];
    // Had step 3 waited for rank 1 its note would say 'never ended ... within 0.3 s'.
    expect(three.note).toBe(
      'skipped: partial: rank 1 of 2 declared gone (the stream ended without Goodbye and did not come back within 0.3 s): ' +
        'step 3 and later steps without it are excluded at once until it rejoins',
    );
    expect(four.note).toBe('skipped: partial: rank 1 of 2 gone — step 4 excluded');
    expect([three.skipped, four.skipped, four.stepsMeasured]).toEqual([true, true, measured]);

    // torchrun elastic restarts every worker: the same run and ranks, new sessions, steps from 0 again.
    rank0.end();
    const restarted0 = attach(0, 'b0');
    rank1 = attach(1, 'b1');
    for (const n of [0, 1]) {
      step(restarted0, n);
      step(rank1, n);
    }
    const again = await stepStats(1, measured + 1);
    expect([again.skipped, again.ranks, again.stepsMeasured]).toEqual([false, 2, measured + 2]);
    const health = await firstValueFrom(sidecar.health$.pipe(filter((h) => h.stepsCompleted >= 4)));
    expect([health.stepsCompleted, health.stepsIncomplete]).toEqual([4, 3]);
    expect(seen.filter((s) => s.step === 3 || s.step === 4).length).toBe(2); // each reported once
    sub.unsubscribe();
    restarted0.end();
    rank1.end();
  });

  it('a rank that reconnects (same session) before the timeout loses nothing and is never declared gone', async () => {
    sidecar = await startSidecar({ port: 0, partialStepTimeoutMs: 300 });
    client = connect(sidecar.address);
    const rank0 = attach(0, 's0');
    let rank1 = attach(1, 's1');
    step(rank0, 0);
    step(rank1, 0);
    await stepStats(0);
    rank1.end();
    await connected(1);
    step(rank0, 1);
    rank1 = attach(1, 's1'); // the same process, a new connection
    step(rank1, 1);
    const one = await stepStats(1);
    expect([one.skipped, one.ranks, one.stepsMeasured]).toEqual([false, 2, 2]);
    // Past the timeout since it left: not gone (a gone rank's step 2 would be excluded at once).
    await new Promise((resolve) => setTimeout(resolve, 450));
    step(rank0, 2);
    step(rank1, 2);
    const two = await stepStats(2);
    expect([two.skipped, two.ranks, two.stepsMeasured]).toEqual([false, 2, 3]);
    rank0.end();
    rank1.end();
  });

  it("a step a replaced process ended is dropped, not joined with its successor's step of the same number", async () => {
    sidecar = await startSidecar({ port: 0, healthIntervalMs: 20 });
    client = connect(sidecar.address);
    const old0 = attach(0, 'old');
    step(old0, 0); // then the process dies before rank 1 ends step 0
    old0.end();
    await connected(0);
    const new0 = attach(0, 'new');
    const rank1 = attach(1, 'r1');
    step(new0, 0);
    step(rank1, 0);
    const zero = await stepStats(0);
    expect([zero.skipped, zero.ranks, zero.globalBatch]).toEqual([false, 2, 2 * 2 * 16]); // the old end's examples are not added
    const health = await firstValueFrom(sidecar.health$.pipe(filter((h) => h.stepsCompleted >= 1)));
    expect(health.stepsIncomplete).toBe(1);
    new0.end();
    rank1.end();
  });

  it('a step the old processes left half-ended is reported partial once the new ones continue the numbering (resumed: first_step)', async () => {
    sidecar = await startSidecar({ port: 0, partialStepTimeoutMs: 600_000 }); // only the restart can give step 2 up
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
    // The new processes resume after rank 0's checkpoint of step 2: steps 3 and 4.
    const new0 = attach(0, 'b0');
    const new1 = attach(1, 'b1');
    for (const n of [3, 4]) {
      step(new0, n);
      step(new1, n);
    }
    await stepStats(4);
    expect(seen.map((s) => [s.step, s.skipped, s.stepsMeasured])).toEqual([[0, false, 1], [1, false, 2], [2, true, 2], [3, false, 3], [4, false, 4]]);
    expect(seen[2]?.note).toBe('skipped: partial: rank 0 restarted (a new process) before rank 1 of 2 ended step 2 — excluded');
    const health = await firstValueFrom(sidecar.health$.pipe(filter((h) => h.stepsCompleted >= 4)));
    expect([health.stepsCompleted, health.stepsIncomplete]).toEqual([4, 1]);
    sub.unsubscribe();
    new0.end();
    new1.end();
  });
});

describe('serve --partial-step-timeout', () => {
  const start = cliEachTest();

  it.each([['0'], ['-1'], ['soon'], ['']])('rejects %j with a named error and exit code 2', async (value) => {
    const run = start(['serve', '--port', '0', '--json', '--no-log', `--partial-step-timeout=${value}`]);
    expect(await run.exit).toBe(2);
    expect(run.stderr()).toContain(`--partial-step-timeout must be a number of seconds > 0, got '${value}'`);
  });
});
