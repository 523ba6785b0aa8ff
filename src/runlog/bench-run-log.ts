// Benchmark (not a test): what logging costs the event loop that ingests steps.
// `node dist/src/runlog/bench-run-log.js [steps]` after `npx tsc -p .`.
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { Subject } from 'rxjs';
import type { RunInfo, StepStats } from '../types.js';
import { DEFAULT_BATCH_POLICY } from '../recommend/batch-policy.js';
import { DEFAULT_SMOOTHING } from '../stats/smoothing-options.js';
import { readRunLog } from './read-run-log.js';
import { RunResumer } from './run-resumer.js';
import { writeRunLog } from './write-run-log.js';

const LAYERS = [{ name: 'fc.weight', numel: 4096, kind: 'Linear' }];

function runInfo(run: string): RunInfo {
  return {
    run,
    worldSize: 1,
    ranksConnected: 1,
    source: 'accumulation',
    mode: 'norms',
    layers: LAYERS,
    parameters: 4096,
    uncoveredLayers: [],
    datasetSize: null,
    every: 1,
    startedUnixMs: Date.now(),
    ended: false,
    optimizer: 'SGD',
    policy: {},
  };
}

function step(run: string, step: number): StepStats {
  return {
    run,
    step,
    source: 'accumulation',
    globalBatch: 64,
    microBatches: 4,
    ranks: 1,
    levels: 2,
    raw: { gradSqNorm: 1.1034, traceSigma: 40.2187, bSimple: 36.4497, interval: null, trusted: false },
    smoothed: {
      gradSqNorm: 1.5123,
      traceSigma: 96.3412,
      bSimple: 63.7054,
      interval: { low: 40.1137, high: 99.7425 },
      trusted: true,
      spread: { varGradSqNorm: 0.0113, varTraceSigma: 4.0271, covariance: -0.0218, df: 37.52 },
    },
    lr: 0.1,
    loss: 0.4213,
    skipped: false,
    note: null,
    unixMs: Date.now(),
    stepsMeasured: step + 1,
    temperature: 0.1 / 64,
    regimeStartStep: 0,
    temperatureChange: null,
  };
}

/** Feeds `steps` StepStats, 100 per event-loop turn like a busy ingest; returns its event-loop delay (ms) and time spent in next(). */
async function feed(stats: Subject<StepStats>, steps: number) {
  const delay = monitorEventLoopDelay({ resolution: 1 });
  delay.enable();
  let nextNs = 0n;
  for (let i = 0; i < steps; i++) {
    const value = step('bench', i);
    const t = process.hrtime.bigint();
    stats.next(value);
    nextNs += process.hrtime.bigint() - t;
    if (i % 100 === 99) await new Promise((resolve) => setImmediate(resolve));
  }
  delay.disable();
  return { p99: delay.percentile(99) / 1e6, max: delay.max / 1e6, nextUs: Number(nextNs) / steps / 1000 };
}

/** The same stream with no subscriber (the baseline), then with the run log writing it. */
export async function runRunLogBench(steps = 100_000): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'noisescope-runlog-bench-'));
  try {
    const baseline = await feed(new Subject<StepStats>(), steps);
    const stats = new Subject<StepStats>();
    const runs = new Subject<readonly RunInfo[]>();
    const writer = writeRunLog({ runs$: runs, stats$: stats }, { dir });
    runs.next([runInfo('bench')]);
    const start = process.hrtime.bigint();
    const logged = await feed(stats, steps);
    await writer.close();
    const totalMs = Number(process.hrtime.bigint() - start) / 1e6;
    const { size } = await stat(writer.pathFor('bench'));
    const readStart = performance.now();
    const log = await readRunLog(writer.pathFor('bench'));
    const readMs = performance.now() - readStart;
    // What a restarted sidecar does at the run's first step: read, parse and replay the whole log (synchronously).
    const resumeStart = performance.now();
    const resumed = new RunResumer(() => writer.pathFor('bench'), DEFAULT_SMOOTHING, DEFAULT_BATCH_POLICY).estimation('bench', LAYERS, steps);
    const resumeMs = performance.now() - resumeStart;
    const ms = (v: number) => v.toFixed(1);
    return [
      `run log: ${steps} steps, ${Math.round(size / steps)} bytes/step, ${writer.counters.dropped} dropped`,
      `  on the ingest path: ${logged.nextUs.toFixed(2)} µs/step (no subscriber: ${baseline.nextUs.toFixed(2)})`,
      `  fed and written to disk: ${Math.round((steps / totalMs) * 1000).toLocaleString('en-US')} steps/s`,
      `  event-loop delay: p99 ${ms(logged.p99)} ms, max ${ms(logged.max)} ms (no subscriber: p99 ${ms(baseline.p99)}, max ${ms(baseline.max)})`,
      `  read back: ${log.records.length} records in ${Math.round(readMs)} ms`,
      `  resumed by a restarted sidecar (read, parse, replay smoothing and policy): ${Math.round(resumeMs)} ms, at step ${resumed?.lastStep ?? 'none'}`,
    ].join('\n');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const steps = process.argv[2] ? Number(process.argv[2]) : undefined;
  if (steps !== undefined && !(Number.isInteger(steps) && steps > 0)) throw new RangeError(`steps must be an integer > 0, got '${process.argv[2]}'`);
  process.stdout.write(`${await runRunLogBench(steps)}\n`);
}
