// The Watch client turns a real sidecar's RunEvents back into the same Observables.
import { firstValueFrom, filter, type Subscription } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { watchSidecar, type RemoteSidecar } from '../../src/remote/watch-client.js';
import { startSidecar, type Sidecar } from '../../src/sidecar.js';
import type { Health, LayerStats, Recommendation, RunInfo, StepStats } from '../../src/types.js';
import { accumulationStep, connect, hello, RankStream } from '../support/rank-client.js';
import { SyntheticRun } from '../support/synthetic-run.js';
import { startTcpProxy } from '../support/tcp-proxy.js';

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

function record<T>(source: { subscribe(f: (v: T) => void): Subscription }): T[] {
  const seen: T[] = [];
  const s = source.subscribe((v) => seen.push(v));
  cleanup.push(() => s.unsubscribe());
  return seen;
}


/** Micro-batch norms with noise around a common gradient, so every step has an estimate. */
function drive(rank: RankStream, steps: number) {
  for (let step = 0; step < steps; step++) {
    const micro = [0, 1, 2, 3].map((i) => [4 + ((step * 7 + i * 3) % 5), 1 + ((step + i) % 3) * 0.2, 2 + ((step * 5 + i) % 4) * 0.3]);
    // .grad after accumulation is the sum of the 4 micro-batch gradients: 16× the mean's squared norm.
    const accumulated = [2.5 + (step % 3) * 0.1, 0.6, 1.1].map((v) => 16 * v);
    for (const m of accumulationStep(step, micro, accumulated)) rank.send(m);
  }
}

describe('watchSidecar', () => {
  let sidecar: Sidecar;
  let remote: RemoteSidecar;

  it('reproduces the sidecar’s stats$, layers$, runs$ and health$ over real gRPC', async () => {
    sidecar = await startSidecar({ port: 0, healthIntervalMs: 50 });
    cleanup.push(() => sidecar.close());
    const local = { stats: record<StepStats>(sidecar.stats$), layers: record<LayerStats>(sidecar.layers$), runs: record<readonly RunInfo[]>(sidecar.runs$), health: record<Health>(sidecar.health$) };
    remote = watchSidecar(sidecar.address);
    cleanup.push(() => remote.close());
    const far = { stats: record<StepStats>(remote.stats$), layers: record<LayerStats>(remote.layers$), runs: record<readonly RunInfo[]>(remote.runs$), health: record<Health>(remote.health$) };
    await firstValueFrom(remote.connection$.pipe(filter((c) => c.state === 'connected')));

    const client = connect(sidecar.address);
    cleanup.push(() => client.close());
    const rank = new RankStream(client);
    rank.send(hello({ run: 'watched', datasetSize: 1797 }));
    drive(rank, 30);
    await expect.poll(() => local.stats.length, { timeout: 10_000 }).toBe(30);
    await expect.poll(() => far.stats.length, { timeout: 10_000 }).toBe(30);
    expect(far.stats).toEqual(local.stats);
    expect(local.stats.at(-1)!.smoothed?.bSimple).toEqual(expect.any(Number));
    await expect.poll(() => far.layers.length).toBe(local.layers.length);
    expect(far.layers).toEqual(local.layers);

    rank.send({ goodbye: { reason: 'done' } });
    rank.end();
    await expect.poll(() => far.runs.at(-1)?.[0]?.ended, { timeout: 10_000 }).toBe(true);
    // The wire carries every RunInfo field and each change of a run (ranks connected, source).
    expect(far.runs.at(-1)).toEqual(local.runs.at(-1));
    // A client that connects after the run ended hears it as ended, not as started.
    const later = watchSidecar(sidecar.address);
    cleanup.push(() => later.close());
    const laterRuns = record<readonly RunInfo[]>(later.runs$);
    await expect.poll(() => laterRuns.at(-1), { timeout: 10_000 }).toEqual(local.runs.at(-1));

    // Each remote health value is one the sidecar emitted.
    await expect.poll(() => far.health.length).toBeGreaterThan(2);
    for (const h of far.health.slice(-3)) expect(local.health).toContainEqual(h);
  });

  it('reports a lost connection and reconnects when the sidecar is back', async () => {
    sidecar = await startSidecar({ port: 0, healthIntervalMs: 50 });
    const port = sidecar.port;
    remote = watchSidecar(sidecar.address, { retryMs: 50, maxRetryMs: 200 });
    cleanup.push(() => remote.close());
    const states = record(remote.connection$);
    await expect.poll(() => states.at(-1)?.state, { timeout: 10_000 }).toBe('connected');
    await sidecar.close();
    await expect.poll(() => states.at(-1)?.state, { timeout: 10_000 }).toBe('lost');
    sidecar = await startSidecar({ port, healthIntervalMs: 50 });
    cleanup.push(() => sidecar.close());
    await expect.poll(() => states.at(-1)?.state, { timeout: 10_000 }).toBe('connected');
  });

  it('reproduces recommendations$, gives a later client each run’s latest, and repeats none on reconnect', async () => {
    sidecar = await startSidecar({ port: 0, policy: { window: 3 } });
    cleanup.push(() => sidecar.close());
    const local = record<Recommendation>(sidecar.recommendations$);
    // Through a forwarder, so the connection can be lost while the sidecar keeps its state.
    const proxy = await startTcpProxy(sidecar.address);
    cleanup.push(() => proxy.close());
    remote = watchSidecar(proxy.address, { retryMs: 50, maxRetryMs: 200 });
    cleanup.push(() => remote.close());
    const far = record<Recommendation>(remote.recommendations$);
    const farStats = record<StepStats>(remote.stats$);
    const states = record(remote.connection$);
    const farHealth = record<Health>(remote.health$);
    await firstValueFrom(remote.connection$.pipe(filter((c) => c.state === 'connected')));

    const client = connect(sidecar.address);
    cleanup.push(() => client.close());
    // Noise scale 400 and 4, batch 64: one run is advised to increase, the other to decrease.
    const runs = [
      new SyntheticRun({ run: 'up', bSimple: 400, microExamples: [[16, 16, 16, 16]], seed: 21 }),
      new SyntheticRun({ run: 'down', bSimple: 4, microExamples: [[16, 16, 16, 16]], seed: 22 }),
    ];
    const ranks = runs.map((run) => {
      const rank = new RankStream(client);
      rank.send(run.hello(0));
      return rank;
    });
    for (let step = 0; step < 40; step++) for (const [i, run] of runs.entries()) for (const m of run.messages(step, 0)) ranks[i]!.send(m);
    await expect.poll(() => farStats.length, { timeout: 10_000 }).toBe(80);
    expect(new Set(local.map((r) => r.run))).toEqual(new Set(['up', 'down']));
    await expect.poll(() => far.length).toBe(local.length);
    expect(far).toEqual(local);

    // A client that connects now hears each run's latest, once.
    const later = watchSidecar(sidecar.address);
    cleanup.push(() => later.close());
    const heard = record<Recommendation>(later.recommendations$);
    const latest = ['up', 'down'].map((run) => local.filter((r) => r.run === run).at(-1));
    await expect.poll(() => heard.length).toBe(2);
    expect(new Set(heard)).toEqual(new Set(latest));

    // A lost connection: the sidecar re-sends each run's latest on reconnect, which is not a new one.
    proxy.cut();
    await expect.poll(() => states.at(-1)?.state, { timeout: 10_000 }).toBe('lost');
    await expect.poll(() => states.at(-1)?.state, { timeout: 10_000 }).toBe('connected');
    // Health comes after the re-sent runs, steps and recommendations.
    const healthBefore = farHealth.length;
    await expect.poll(() => farHealth.length, { timeout: 10_000 }).toBeGreaterThan(healthBefore);
    expect(farStats.length).toBe(82); // each run's latest step, re-sent
    expect(far).toEqual(local);
  });
});
