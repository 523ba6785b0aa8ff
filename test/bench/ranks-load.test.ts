// `noisescope bench ranks` at a small scale: a real sidecar process, real gRPC, and
// accounting that adds up. No timing is asserted, only that every figure is there.
import { describe, expect, it } from 'vitest';
import { formatRanksLoad, runRanksLoad } from '../../src/bench/ranks-load.js';

describe('bench ranks', () => {
  it('8 ranks from 2 client processes for 2 s: every step sent completes, nothing refused or dropped, every figure reported', async () => {
    const r = await runRanksLoad({ ranks: 8, rate: 10, seconds: 2, layers: 5, microBatches: 2, workers: 2 });
    expect(r.stepsSent).toBe(20);
    expect(r.stepsCompleted).toBe(r.stepsSent);
    expect(r.refusals).toBe(0);
    expect(r.health).toEqual({ refused: 0, stepsIncomplete: 0, droppedByHooks: 0, messages: 8 + 20 * 8 * 3 }); // hellos, then 2 shards + StepEnd per rank per step
    // One latency per step; one send figure per step per worker.
    for (const [q, samples] of [[r.latency, 20], [r.latencyInSidecar, 20], [r.latencyAfterWarmup, 18], [r.sendLag, 40], [r.sendDuration, 40]] as const) {
      expect(q.samples).toBe(samples);
      expect(q.p50Ms).toBeLessThanOrEqual(q.p99Ms);
      expect(q.p99Ms).toBeLessThanOrEqual(q.maxMs);
    }
    expect(r.latency.p50Ms).toBeGreaterThan(0);
    expect(r.cpuCores.mean).toBeGreaterThan(0);
    expect(r.cpuCores.max).toBeGreaterThan(0);
    expect(r.rssMiB.series.length).toBeGreaterThanOrEqual(3); // start, and one a second while stepping
    expect(r.rssMiB.start).toBeGreaterThan(0);
    expect(r.rssMiB.max).toBeGreaterThanOrEqual(Math.max(r.rssMiB.start, r.rssMiB.end));
    expect(r.bSimple.estimate).toBeGreaterThan(0);
    expect(formatRanksLoad(r)).toContain('20 sent, 20 completed');
  }, 60_000);
});
