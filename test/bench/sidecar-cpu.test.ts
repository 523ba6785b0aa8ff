// `noisescope bench sidecar-cpu` at a small scale: a real `serve --json --no-log` process and real
// gRPC; every step sent completes and every figure is there. No timing is asserted.
import { expect, it } from 'vitest';
import { formatSidecarCpu, runSidecarCpu } from '../../src/cli/bench-sidecar-cpu.js';

it('bench sidecar-cpu: 400 bundled steps of 6 layers and 2 micro-batches all complete, CPU per step reported', async () => {
  const r = await runSidecarCpu({ layers: 6, steps: 400, rate: 400, microBatches: 2 });
  expect(r.stepsCompleted).toBe(400);
  expect(r.cpuUsPerStep).toBeGreaterThan(0);
  expect(r.mainThreadUsPerStep).toBeGreaterThan(0);
  expect(r.mainThreadUsPerStep).toBeLessThanOrEqual(r.cpuUsPerStep);
  expect(r.quartersUsPerStep).toHaveLength(4);
  expect(formatSidecarCpu(r)).toMatch(/^6 layers, 2 micro-batches, 400\/400 steps at 400\/s: sidecar CPU \d+ µs per step/);
}, 30_000);
