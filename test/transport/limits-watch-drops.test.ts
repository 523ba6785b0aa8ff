// Watch events dropped for a client that does not read are visible: health.watchEventsDropped on health$, on the
// wire to another Watch client, and in serve's problem line. A real sidecar, a raw HTTP/2 Watch call whose
// window stays shut, and real rank steps.
import { filter, firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { stalledWatch } from '../../src/bench/raw-grpc.js';
import { formatProblems } from '../../src/cli/format.js';
import { watchSidecar, type Health } from '../../src/index.js';
import { limitedSidecars } from '../support/limited-sidecar.js';
import { accumulationStep, hello, RankStream } from '../support/rank-client.js';

const MICRO = [
  [4, 1, 2],
  [5, 1.2, 2.5],
];
const ACCUMULATED = [16, 4, 8];

const sidecars = limitedSidecars();

describe('Watch drops in health', () => {
  it('counts the events a stalled Watch client lost, on health$, over the wire and in the problem line', async () => {
    const queueEvents = 20;
    const { sidecar: started, client } = await sidecars.start({ watchQueueEvents: queueEvents });
    // Before any client stalls nothing is dropped, and the problem line stays empty.
    const first = await firstValueFrom(started.health$);
    expect(first.watchEventsDropped).toBe(0);
    expect(formatProblems(first)).toBe('');

    const remote = watchSidecar(started.address);
    sidecars.track(remote);
    await firstValueFrom(remote.connection$.pipe(filter((c) => c.state === 'connected')));
    const stalled = await stalledWatch(started.address);
    sidecars.track(stalled);
    await expect.poll(() => started.watchStats().watchers, { timeout: 10_000 }).toBe(2);

    const rank = new RankStream(client);
    rank.send(hello());
    const steps = 200;
    for (let step = 0; step < steps; step++) for (const m of accumulationStep(step, MICRO, ACCUMULATED)) rank.send(m);
    await expect.poll(() => started.watchStats().dropped, { timeout: 10_000 }).toBeGreaterThan(2 * steps - queueEvents - 100);

    // health$ reads the Watch service's count (health events themselves keep the stalled queue dropping, so it
    // lies between the count before and after); the reading client gets such a figure on the wire.
    const dropped = started.watchStats().dropped;
    const local = await firstValueFrom(started.health$.pipe(filter((h: Health) => h.watchEventsDropped >= dropped)));
    expect(local.watchEventsDropped).toBeLessThanOrEqual(started.watchStats().dropped);
    const far = await firstValueFrom(remote.health$.pipe(filter((h: Health) => h.watchEventsDropped >= dropped)));
    expect(far.watchEventsDropped).toBeGreaterThanOrEqual(dropped);
    expect(formatProblems(far)).toBe(
      `ingest: 0 incomplete steps, 0 refused messages, 0 measurements dropped by hooks, ${far.watchEventsDropped} Watch events dropped (a client not reading)`,
    );
    rank.end();
  });
});
