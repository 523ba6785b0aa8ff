// health.ranksGone: a rank whose stream ended without Goodbye is counted once the partial-step timeout has
// passed, even while no other rank ends a step (the sidecar's own timer declares it), on health$ and over Watch,
// and is no longer counted when it rejoins; a rank that said Goodbye is never counted.
import { filter, firstValueFrom, type Observable } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { formatProblems } from '../../src/cli/format.js';
import { startSidecar, type Sidecar } from '../../src/index.js';
import { watchSidecar, type RemoteSidecar } from '../../src/remote/watch-client.js';
import type { NoiseScopeClient } from '../../src/transport/generated/noisescope/v1/NoiseScope.js';
import type { Health } from '../../src/types.js';
import { accumulationStep, connect, hello, RankStream } from '../support/rank-client.js';

const MICRO = [
  [4, 1, 2],
  [5, 1, 3],
];
const ACCUMULATED = [12, 3, 6];

describe('health.ranksGone', () => {
  let sidecar: Sidecar | null = null;
  let remote: RemoteSidecar | null = null;
  let client: NoiseScopeClient | null = null;
  afterEach(async () => {
    remote?.close();
    client?.close();
    await sidecar?.close();
  });

  const attach = (run: string, worldSize: number, rank: number, session: string) => {
    const stream = new RankStream(client as NoiseScopeClient);
    stream.send(hello({ run, worldSize, rank, session }));
    return stream;
  };
  const step = (stream: RankStream, n: number) => {
    for (const m of accumulationStep(n, MICRO, ACCUMULATED)) stream.send(m);
  };
  const healthWhere = (health$: Observable<Health>, ok: (h: Health) => boolean) => firstValueFrom(health$.pipe(filter(ok)));

  it('counts a rank killed without Goodbye after the timeout with no other step ended, and not once it rejoins', async () => {
    sidecar = await startSidecar({ port: 0, healthIntervalMs: 20, partialStepTimeoutMs: 300 });
    client = connect(sidecar.address);
    remote = watchSidecar(sidecar.address);

    // A run whose only rank finishes politely: Goodbye, then its stream ends. Never gone.
    const polite = attach('polite', 1, 0, 'p0');
    step(polite, 0);
    polite.send({ goodbye: { dropped: 0 } });
    polite.end();

    const rank0 = attach('elastic', 2, 0, 'a0');
    const rank1 = attach('elastic', 2, 1, 'a1');
    step(rank0, 0);
    step(rank1, 0);
    const joined = await healthWhere(sidecar.health$, (h) => h.stepsCompleted === 2 && h.ranksConnected === 2);
    expect(joined.ranksGone).toBe(0);
    expect(formatProblems(joined)).toBe('');

    rank1.end(); // killed: no Goodbye; rank 0 stays attached and ends no further step
    const gone = await healthWhere(sidecar.health$, (h) => h.ranksGone > 0);
    // The polite rank left before the killed one, so it was past the timeout too: only rank 1 counts.
    expect([gone.ranksGone, gone.ranksConnected, gone.stepsIncomplete]).toEqual([1, 1, 0]);
    expect(formatProblems(gone)).toBe('ingest: 0 incomplete steps, 0 refused messages, 0 measurements dropped by hooks, 1 rank gone');
    // The same figure over Watch (to-wire / from-wire).
    expect((await healthWhere(remote.health$, (h) => h.ranksGone === 1)).ranksConnected).toBe(1);
    // Still gone a few health reports later: nothing clears it but the rank itself.
    const later = await healthWhere(sidecar.health$, (h) => h.unixMs >= gone.unixMs + 100);
    expect(later.ranksGone).toBe(1);

    // torchrun elastic: a new process (new session) takes rank 1 over; it is back.
    const restarted1 = attach('elastic', 2, 1, 'b1');
    const back = await healthWhere(sidecar.health$, (h) => h.ranksConnected === 2);
    expect(back.ranksGone).toBe(0);
    expect((await healthWhere(remote.health$, (h) => h.ranksConnected === 2)).ranksGone).toBe(0);
    rank0.end();
    restarted1.end();
  });
});
