// Benchmark: what the dashboard costs. (1) CPU per rendered frame at 20 updates/s on an
// 80×24 terminal; (2) step end → stats$ latency over gRPC with and without a dashboard open.
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { BehaviorSubject, firstValueFrom, filter, ReplaySubject } from 'rxjs';
import { renderDashboard } from '../../tui/render-dashboard.js';
import { startSidecar, type Sidecar } from '../sidecar.js';
import { loadProto } from '../transport/proto.js';
import type { Health, LayerStats, Recommendation, RunInfo, StepStats } from '../types.js';

/** A terminal that keeps nothing: Ink writes its frames here as it would to a TTY. */
class NullTerminal extends Writable {
  readonly isTTY = true;
  columns = 80;
  rows = 24;
  writes = 0;
  frames = 0;
  readonly onFrame = () => void this.frames++;
  bytes = 0;
  override _write(chunk: Buffer, _enc: BufferEncoding, done: () => void): void {
    this.writes++;
    this.bytes += chunk.length;
    done();
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function syntheticStep(step: number, layers: number): { stats: StepStats; layers: LayerStats } {
  const b = 120 + 30 * Math.sin(step / 20);
  const smoothed = { gradSqNorm: 0.1, traceSigma: b * 0.1, bSimple: b, interval: { low: b * 0.8, high: b * 1.3 }, trusted: step > 20 };
  return {
    stats: {
      run: 'bench', step, source: 'accumulation', globalBatch: 64, microBatches: 4, ranks: 1, levels: 2,
      raw: smoothed, smoothed, lr: 0.1, loss: 0.5, skipped: false, note: null, unixMs: Date.now(), stepsMeasured: step + 1,
      // A learning-rate change every 100 steps: the chart's restart column and notice are drawn too.
      temperature: 0.1 / 64, regimeStartStep: step - (((step % 100) + 100) % 100),
      temperatureChange: step % 100 === 0 ? { fromLr: 0.1, toLr: 0.05, fromBatch: 64, toBatch: 64 } : null,
    },
    layers: {
      run: 'bench',
      step,
      layers: Array.from({ length: layers }, (_, i) => ({ name: `layer${i}.weight`, numel: 1000, gradSqNorm: 0.01 * (i + 1), traceSigma: 1 + (i % 7), bSimple: (1 + (i % 7)) / (0.01 * (i + 1)) })),
    },
  };
}

/** Advice that alternates between an increase and a hold, so the panel's text changes. */
function syntheticRecommendation(step: number, sequence: number): Recommendation {
  const increase = sequence % 2 === 1;
  return {
    run: 'bench', step, sequence, action: increase ? 'increase' : 'hold', currentGlobalBatch: 64, recommendedGlobalBatch: increase ? 128 : 64,
    microBatch: 16, accumulationSteps: increase ? 8 : 4, worldSize: 1, noiseScale: 140, interval: { low: 115, high: 180 }, targetBatch: 140,
    objective: 'balanced', stepsFactor: increase ? 0.68 : 1, examplesFactor: increase ? 1.17 : 1,
    lrHint: increase ? { currentLr: 0.1, suggestedLr: 0.141, rule: 'sqrt', note: 'A heuristic.' } : null,
    confidence: 0.9, reason: `B_noise 140 [115, 180] ${increase ? 'has stayed above' : 'covers'} the batch 64.`, unixMs: Date.now(),
  };
}

/** CPU ms per frame with steps arriving at `rate`/s for `seconds` (and a new recommendation every 2 s). */
export async function measureRenderCost(rate = 20, seconds = 10, layers = 100) {
  const stats$ = new ReplaySubject<StepStats>(1);
  const layers$ = new ReplaySubject<LayerStats>(1);
  const runs$ = new BehaviorSubject<readonly RunInfo[]>([
    { run: 'bench', worldSize: 1, ranksConnected: 1, source: 'accumulation', mode: 'norms', layers: [], parameters: 1e6, uncoveredLayers: [], datasetSize: null, every: 1, startedUnixMs: Date.now(), ended: false, optimizer: 'SGD', policy: {} },
  ]);
  const health$ = new ReplaySubject<Health>(1);
  const recommendations$ = new ReplaySubject<Recommendation>(1);
  const terminal = new NullTerminal();
  // The same frame cap as updates, so every update is one frame at most.
  const ink = renderDashboard({ stats$, layers$, runs$, health$, recommendations$ }, { maxFps: rate, keys: false, onFrame: terminal.onFrame, stdout: terminal as unknown as NodeJS.WriteStream });
  // Warm-up (JIT, first layout) before measuring.
  for (let step = 0; step < rate * 2; step++) {
    const s = syntheticStep(step - rate * 2, layers);
    stats$.next(s.stats);
    layers$.next(s.layers);
    await sleep(1000 / rate);
  }
  const frames0 = terminal.frames;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const steps = rate * seconds;
  for (let step = 0; step < steps; step++) {
    const s = syntheticStep(step, layers);
    stats$.next(s.stats);
    layers$.next(s.layers);
    if (step % (rate * 2) === 0) recommendations$.next(syntheticRecommendation(step, step / (rate * 2) + 1));
    if (step % rate === 0) {
      health$.next({ unixMs: Date.now(), ranksConnected: 1, messages: step * 5, bytes: step * 4000, refused: 0, stepsCompleted: step, stepsIncomplete: 0, droppedByHooks: 0, computeBackend: 'cpu', ranksGone: 0, watchEventsDropped: 0 });
    }
    await sleep(1000 / rate);
  }
  const cpu = process.cpuUsage(cpu0);
  const wallMs = performance.now() - t0;
  const frames = terminal.frames - frames0;
  ink.unmount();
  const cpuMs = (cpu.user + cpu.system) / 1000;
  return { rate, seconds: wallMs / 1000, layers, updates: steps, frames, cpuMs, cpuMsPerFrame: cpuMs / Math.max(1, frames), cpuMsPerUpdate: cpuMs / steps, cpuShare: cpuMs / wallMs };
}

async function closedLoopLatency(sidecar: Sidecar, steps: number, layers: number): Promise<{ p50: number; p99: number; stepsPerSecond: number }> {
  const Service = loadProto().noisescope.v1.NoiseScope;
  const client = new Service(sidecar.address, grpc.credentials.createInsecure());
  const call = client.Attach();
  call.on('data', () => {});
  call.on('error', () => {});
  call.write({ hello: { protocolVersion: 1, run: 'latency', worldSize: 1, every: 1, layers: Array.from({ length: layers }, (_, i) => ({ name: `layer${i}`, numel: 1000, kind: 'Linear' })) } });
  const latencies: number[] = [];
  const start = performance.now();
  for (let step = 0; step < steps; step++) {
    const out = firstValueFrom(sidecar.stats$.pipe(filter((s) => s.step === step)));
    for (let i = 0; i < 4; i++) call.write({ shard: { step, microBatch: i, examples: 16, sqNorms: { values: Array.from({ length: layers }, () => 1 + Math.random()) } } });
    const t0 = performance.now();
    call.write({ stepEnd: { step, microBatches: 4, localExamples: 64, globalExamples: 64, accumulatedSqNorms: Array.from({ length: layers }, () => 4 + Math.random()) } });
    await out;
    latencies.push(performance.now() - t0);
  }
  const elapsed = performance.now() - start;
  call.end();
  client.close();
  const sorted = latencies.slice(steps / 10).sort((a, b) => a - b);
  const q = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
  return { p50: q(0.5), p99: q(0.99), stepsPerSecond: (steps * 1000) / elapsed };
}

/** The sidecar's closed-loop ingest, alone and with a dashboard subscribed and rendering. */
export async function measureIngestWithDashboard(steps = 2000, layers = 100) {
  const alone = await startSidecar({ port: 0 });
  const without = await closedLoopLatency(alone, steps, layers);
  await alone.close();
  const watched = await startSidecar({ port: 0 });
  const terminal = new NullTerminal();
  const ink = renderDashboard(watched, { keys: false, onFrame: terminal.onFrame, stdout: terminal as unknown as NodeJS.WriteStream });
  const withDashboard = await closedLoopLatency(watched, steps, layers);
  ink.unmount();
  await watched.close();
  return { steps, layers, without, withDashboard, frames: terminal.frames };
}

export async function runDashboardBench(): Promise<string> {
  const render = await measureRenderCost();
  const ingest = await measureIngestWithDashboard();
  const f = (v: number) => v.toFixed(2);
  return [
    `dashboard render: ${render.updates} updates at ${render.rate}/s (80×24, ${render.layers} layers) drew ${render.frames} frames in ${f(render.seconds)} s: ` +
      `${f(render.cpuMsPerFrame)} ms CPU per frame, ${f(render.cpuMsPerUpdate)} ms per update, ${(render.cpuShare * 100).toFixed(1)}% of one core`,
    `step end → stats$ (norms mode, ${ingest.layers} layers, ${ingest.steps} steps, closed loop over gRPC loopback):`,
    `  without a dashboard: p50 ${f(ingest.without.p50)} ms, p99 ${f(ingest.without.p99)} ms, ${ingest.without.stepsPerSecond.toFixed(0)} steps/s`,
    `  with the dashboard:  p50 ${f(ingest.withDashboard.p50)} ms, p99 ${f(ingest.withDashboard.p99)} ms, ${ingest.withDashboard.stepsPerSecond.toFixed(0)} steps/s (${ingest.frames} frames drawn)`,
  ].join('\n');
}
