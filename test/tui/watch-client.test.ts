// The Watch client turns a real sidecar's RunEvents back into the same Observables.
import { firstValueFrom, filter, type Subscription } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { watchSidecar, type RemoteSidecar } from '../../src/remote/watch-client.js';
import { startSidecar, type Sidecar } from '../../src/sidecar.js';
import type { Health, LayerStats, RunInfo, StepStats } from '../../src/types.js';
import { accumulationStep, connect, hello, RankStream } from '../support/rank-client.js';

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
});
