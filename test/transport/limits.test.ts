import { status } from '@grpc/grpc-js';
import { filter, firstValueFrom } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { startSidecar, type Sidecar } from '../../src/index.js';
import { DEFAULT_LIMITS, resolveLimits, type SidecarLimits } from '../../src/transport/limits.js';
import { loadProto } from '../../src/transport/proto.js';
import type { RunEvent__Output } from '../../src/transport/generated/noisescope/v1/RunEvent.js';
import { accumulationStep, connect, hello, LAYERS, RankStream } from '../support/rank-client.js';
import { stalledWatch } from '../../src/bench/raw-grpc.js';

const MICRO = [
  [4, 1, 2],
  [5, 1.2, 2.5],
];
const ACCUMULATED = [16, 4, 8];

let sidecar: Sidecar | null = null;
const clients: { close(): void }[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await sidecar?.close();
  sidecar = null;
});

async function start(limits: Partial<SidecarLimits>) {
  sidecar = await startSidecar({ port: 0, healthIntervalMs: 50, limits });
  const client = connect(sidecar.address);
  clients.push(client);
  return { sidecar, client };
}

async function until(ready: () => boolean): Promise<void> {
  await expect.poll(ready, { timeout: 10_000, interval: 20 }).toBe(true);
}

describe('limits', () => {
  it('refuses bad limit options by name', () => {
    expect(resolveLimits()).toEqual(DEFAULT_LIMITS);
    expect(() => resolveLimits({ runs: 0 })).toThrow('limits.runs must be a whole number ≥ 1, got 0');
    expect(() => resolveLimits({ maxMessageBytes: 2 ** 31 })).toThrow(/limits.maxMessageBytes must be below 2 GiB/);
  });

  it('refuses a Hello with more layers or ranks than the limits, naming each limit, its value and how to raise it', async () => {
    const { client } = await start({ layersPerRun: 2, ranksPerRun: 4 });
    const many = new RankStream(client);
    many.send(hello());
    const wide = new RankStream(client);
    wide.send(hello({ run: 'wide', worldSize: 5, layers: LAYERS.slice(0, 2) }));
    await until(() => many.status !== null && wide.status !== null);
    expect(many.status?.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(many.status?.details).toBe(
      'Hello: 3 layers are too many (limit layers per run = 2: raise it with `serve --max-layers` or startSidecar({ limits: { layersPerRun } }))',
    );
    expect(wide.status?.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(wide.status?.details).toContain('world_size 5 is too many ranks (limit ranks per run = 4: raise it with startSidecar({ limits: { ranksPerRun } }))');
    // Within the limits the same sidecar still welcomes a rank.
    const fits = new RankStream(client);
    fits.send(hello({ layers: LAYERS.slice(0, 2), worldSize: 4 }));
    await until(() => fits.received.length > 0);
    expect(fits.received[0]?.welcome?.run).toBe('test-run');
  });

  it('holds at most `runs` runs with ranks attached, and forgets an ended run to make room', async () => {
    const { sidecar, client } = await start({ runs: 2 });
    const a = new RankStream(client);
    a.send(hello({ run: 'a' }));
    const b = new RankStream(client);
    b.send(hello({ run: 'b' }));
    await until(() => a.received.length > 0 && b.received.length > 0);
    const c = new RankStream(client);
    c.send(hello({ run: 'c' }));
    await until(() => c.status !== null);
    expect(c.status?.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(c.status?.details).toBe(
      "Hello for run 'c': this sidecar already holds 2 runs, each with a rank attached (limit runs at once = 2: raise it with `serve --max-runs` or startSidecar({ limits: { runs } }))",
    );
    // Run a ends (Goodbye, stream closed): the next new run takes its place; b is untouched.
    a.send({ goodbye: { reason: 'done', dropped: 0 } });
    a.end();
    await until(() => a.status !== null);
    const again = new RankStream(client);
    again.send(hello({ run: 'c' }));
    await until(() => again.received.length > 0);
    expect(again.received[0]?.welcome?.run).toBe('c');
    const runs = await firstValueFrom(sidecar.runs$.pipe(filter((r) => r.some((x) => x.run === 'c'))));
    expect(runs.map((r) => r.run).sort()).toEqual(['b', 'c']);
    const stats = firstValueFrom(sidecar.stats$.pipe(filter((s) => s.run === 'b')));
    for (const m of accumulationStep(0, MICRO, ACCUMULATED)) b.send(m);
    expect((await stats).step).toBe(0);
  });
});

describe('Watch back-pressure', () => {
  it('holds at most watchQueueEvents for a client that never reads, dropping the oldest steps, while a reading client gets every step', async () => {
    const queueEvents = 40;
    const { sidecar, client } = await start({ watchQueueEvents: queueEvents });
    const stalled = await stalledWatch(sidecar.address);
    clients.push(stalled);
    await until(() => sidecar.watchStats().watchers === 1);
    const reader = client.Watch({});
    clients.push({ close: () => reader.cancel() });
    reader.on('error', () => {});
    const readSteps: number[] = [];
    reader.on('data', (e: RunEvent__Output) => void (e.step && e.step.run === 'test-run' && readSteps.push(e.step.step)));

    const steps = 400;
    const rank = new RankStream(client);
    rank.send(hello());
    for (let step = 0; step < steps; step++) for (const m of accumulationStep(step, MICRO, ACCUMULATED)) rank.send(m);
    await until(() => readSteps.length === steps);
    // Every step gave the stalled watcher a step and a layers event at least: far more than it may hold.
    const held = sidecar.watchStats();
    expect(held.watchers).toBe(2);
    expect(held.queued).toBeLessThanOrEqual(queueEvents);
    expect(held.dropped).toBeGreaterThan(2 * steps - queueEvents - 100);
    expect(readSteps).toEqual(Array.from({ length: steps }, (_, i) => i));

    // Once it reads, it gets what was held: the newest steps, the last one included.
    stalled.read();
    const decode = loadProto().noisescope.v1.NoiseScope.service.Watch.responseDeserialize;
    const stepsSeen = () => stalled.messages().flatMap((b) => {
      const e = decode(b) as RunEvent__Output;
      return e.step ? [e.step.step] : [];
    });
    await until(() => stepsSeen().includes(steps - 1));
    await until(() => sidecar.watchStats().queued === 0);
    expect(stepsSeen().length).toBeLessThan(steps);
    rank.end();
  });
});
