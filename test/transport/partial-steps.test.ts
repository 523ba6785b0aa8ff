// A rank killed mid-run: the steps only the survivors end are reported partial and excluded after the timeout.
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

describe('partial-step timeout', () => {
  let sidecar: Sidecar | null = null;
  let client: NoiseScopeClient | null = null;
  afterEach(async () => {
    client?.close();
    await sidecar?.close();
  });

  it('reports each step a dead rank never ended once, as skipped and partial, and counts it incomplete', async () => {
    sidecar = await startSidecar({ port: 0, healthIntervalMs: 20, partialStepTimeoutMs: 200 });
    client = connect(sidecar.address);
    const seen: StepStats[] = [];
    const sub = sidecar.stats$.subscribe((s) => seen.push(s));
    const rank0 = new RankStream(client);
    const rank1 = new RankStream(client);
    rank0.send(hello({ worldSize: 2, rank: 0 }));
    rank1.send(hello({ worldSize: 2, rank: 1 }));
    for (let step = 0; step <= 2; step++) {
      for (const m of accumulationStep(step, MICRO, ACCUMULATED)) rank0.send(m);
      for (const m of accumulationStep(step, MICRO, ACCUMULATED)) rank1.send(m);
    }
    await firstValueFrom(sidecar.stats$.pipe(filter((s) => s.step === 2)));
    rank1.end(); // rank 1 is gone after step 2
    for (const step of [3, 4]) for (const m of accumulationStep(step, MICRO, ACCUMULATED)) rank0.send(m);

    const last = await firstValueFrom(sidecar.stats$.pipe(filter((s) => s.step === 4)));
    const health = await firstValueFrom(sidecar.health$.pipe(filter((h) => h.stepsIncomplete >= 2)));
    sub.unsubscribe();

    expect(seen.filter((s) => s.step <= 2).map((s) => [s.step, s.skipped, s.ranks])).toEqual([
      [0, false, 2],
      [1, false, 2],
      [2, false, 2],
    ]);
    const partial = seen.filter((s) => s.step >= 3);
    expect(partial.map((s) => s.step)).toEqual([3, 4]); // each reported once
    for (const s of partial) {
      expect(s.skipped).toBe(true);
      expect(s.raw).toBeNull();
      expect(s.note).toBe(`skipped: partial: rank 1 of 2 never ended step ${s.step} within 0.2 s — excluded`);
    }
    expect(last.stepsMeasured).toBe(seen.find((s) => s.step === 2)!.stepsMeasured); // excluded from the estimate
    expect(health.stepsIncomplete).toBe(2);
    expect(health.stepsCompleted).toBe(3);
    rank0.end();
  });

  it('rejects a timeout that is not > 0 before anything binds', async () => {
    await expect(startSidecar({ port: 0, partialStepTimeoutMs: 0 })).rejects.toThrow(/partialStepTimeoutMs must be > 0/);
  });
});
