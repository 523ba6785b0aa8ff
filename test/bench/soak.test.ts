// The short soak. Bounded growth is judged by the heap after a full GC, not by time: thousands of
// steps through a real sidecar, with a Watch client that never reads and a run whose second rank
// never ends its steps, must leave the heap where it was once every bounded buffer is full.
// The long run: `noisescope bench soak --minutes N` (a sidecar process, its RSS slope).
import v8 from 'node:v8';
import vm from 'node:vm';
import { filter, firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { startSidecar } from '../../src/index.js';
import { stalledWatch } from '../../src/bench/raw-grpc.js';
import { formatSoak, runSoak, slopePerSample } from '../../src/bench/soak.js';
import { accumulationStep, connect, hello, RankStream } from '../support/rank-client.js';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;
const heapAfterGc = () => {
  gc();
  gc();
  return v8.getHeapStatistics().used_heap_size;
};

const MICRO = [
  [4, 1, 2],
  [5, 1.2, 2.5],
];
const ACCUMULATED = [16, 4, 8];

describe('soak', () => {
  it('keeps the heap flat over 2400 steps of 4 ranks with a stalled watcher and a half-ended run', async () => {
    const watchQueueEvents = 200;
    const sidecar = await startSidecar({ port: 0, healthIntervalMs: 50, partialStepTimeoutMs: 60_000, limits: { watchQueueEvents } });
    const stalled = await stalledWatch(sidecar.address);
    const client = connect(sidecar.address);
    try {
      const ranks = [0, 1, 2, 3].map((rank) => {
        const r = new RankStream(client);
        r.send(hello({ worldSize: 4, rank }));
        return r;
      });
      // Rank 1 of this run never comes: each step waits for it (held, then evicted by the step limit).
      const half = new RankStream(client);
      half.send(hello({ run: 'half', worldSize: 2 }));
      const heap: number[] = [];
      for (let step = 0; step < 2400; step++) {
        const done = firstValueFrom(sidecar.stats$.pipe(filter((s) => s.run === 'test-run' && s.step === step)));
        for (const r of ranks) for (const m of accumulationStep(step, MICRO, ACCUMULATED)) r.send(m);
        for (const m of accumulationStep(step, MICRO, ACCUMULATED)) half.send(m);
        await done;
        if (step === 799 || step === 2399) heap.push(heapAfterGc());
      }
      const held = sidecar.watchStats();
      expect(held.queued).toBe(watchQueueEvents);
      expect(held.dropped).toBeGreaterThan(2 * 2400 - watchQueueEvents - 200);
      // Unbounded, the stalled watcher alone would hold ~1 KB per step (> 1.6 MB over these 1600 steps).
      const [warm, end] = heap as [number, number];
      expect(end - warm, `heap ${(warm / 2 ** 20).toFixed(2)} → ${(end / 2 ** 20).toFixed(2)} MiB`).toBeLessThan(512 * 1024);
      for (const r of [...ranks, half]) {
        expect(r.refusals()).toEqual([]);
        r.end();
      }
    } finally {
      stalled.close();
      client.close();
      await sidecar.close();
    }
  }, 60_000);

  it('bench soak reports the RSS slope and every drop, with a stalled watcher attached', async () => {
    expect(slopePerSample([1, 3, 5, 7])).toBe(2);
    expect(slopePerSample([4, 4, 4])).toBe(0);
    const r = await runSoak({ minutes: 0.1, ranks: 4, rate: 10, layers: 5, workers: 1 });
    expect(r.load.stepsSent).toBe(60);
    expect(r.drops).toEqual({ stepsMissing: 0, refusals: 0, refused: 0, stepsIncomplete: 0, droppedByHooks: 0 });
    expect(Number.isFinite(r.rssSlopeMiBPerMinute)).toBe(true);
    expect(r.rssAfterWarmup.max).toBeGreaterThanOrEqual(Math.max(r.rssAfterWarmup.first, r.rssAfterWarmup.last));
    expect(formatSoak(r)).toContain('drops: none');
  }, 60_000);
});
