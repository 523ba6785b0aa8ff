// `noisescope bench ranks` at a small scale: a real sidecar process, real gRPC, and
// accounting that adds up. No timing is asserted, only that every figure is there.
import { describe, expect, it } from 'vitest';
import { formatRanksLoad, runRanksLoad } from '../../src/bench/ranks-load.js';

describe('bench ranks', () => {
  it('8 ranks for 2 s: every step sent completes, nothing refused or dropped, every figure reported', async () => {
    const r = await runRanksLoad({ ranks: 8, rate: 10, seconds: 2, layers: 5, microBatches: 2 });
    expect(r.stepsSent).toBe(20);
    expect(r.stepsCompleted).toBe(r.stepsSent);
    expect(r.refusals).toBe(0);
    expect(r.health).toEqual({ refused: 0, stepsIncomplete: 0, droppedByHooks: 0, messages: 8 + 20 * 8 * 3 }); // hellos, then 2 shards + StepEnd per rank per step
    for (const q of [r.latency, r.latencyInSidecar, r.sendLag, r.sendDuration]) {
      expect(q.samples).toBe(20);
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
