// `noisescope bench ranks`: N simulated ranks of one run, over real gRPC, into a
// sidecar in its own process (`serve --json`), paced to a step rate. The sidecar's
// CPU and RSS come from /proc/<pid> every second; completed steps, refusals and
// drops from its NDJSON step and health lines; step-end → step-line latency from
// the client's clock (the sidecar runs on the same machine).
import * as grpc from '@grpc/grpc-js';
import { fork, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { UsageError } from '../cli/flags.js';
import { cliPath, cpuSeconds } from './bench-process.js';
import { loadProto } from '../transport/proto.js';
import type { NoiseScopeClient } from '../transport/generated/noisescope/v1/NoiseScope.js';
import type { RankMessage } from '../transport/generated/noisescope/v1/RankMessage.js';
import type { SidecarMessage__Output } from '../transport/generated/noisescope/v1/SidecarMessage.js';
import { gaussianGradients, SeededRandom, simulateSyntheticStep } from './synthetic-gradients.js';
import { stalledWatch } from './raw-grpc.js';

export interface RanksLoadOptions {
  readonly ranks: number;
  /** Optimizer steps per second, every rank. */
  readonly rate: number;
  readonly seconds: number;
  readonly layers: number;
  readonly microBatches: number;
  /** Client processes the ranks are spread over (each drives its share on a shared schedule). */
  readonly workers: number;
  /** Write a V8 CPU profile of the sidecar (node --cpu-prof) into this folder. */
  readonly profileDir?: string;
  /** Watch calls opened on the sidecar whose clients never read (back-pressure under load; the soak opens one). */
  readonly stalledWatchers?: number;
}

export const DEFAULT_RANKS_LOAD: RanksLoadOptions = { ranks: 256, rate: 10, seconds: 30, layers: 50, microBatches: 2, workers: 4 };

export interface Quantiles {
  readonly samples: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
}

export interface RanksLoadReport extends RanksLoadOptions {
  readonly stepsSent: number;
  /** Distinct steps of the run the sidecar printed a step line for. */
  readonly stepsCompleted: number;
  /** Refusal messages the ranks received on their Attach streams. */
  readonly refusals: number;
  /** The sidecar's own counters, from its last health line. */
  readonly health: { readonly refused: number; readonly stepsIncomplete: number; readonly droppedByHooks: number; readonly messages: number };
  /** How late each step's sending began against its schedule, per worker (the clients keeping up). */
  readonly sendLag: Quantiles;
  /** How long writing one step for a worker's ranks took. */
  readonly sendDuration: Quantiles;
  /** Last rank's StepEnd written (by any worker) → the sidecar's step line read by this process. */
  readonly latency: Quantiles;
  /** Last rank's StepEnd written → the step's stats in the sidecar (the step line's unixMs; same machine, same clock; ms resolution). */
  readonly latencyInSidecar: Quantiles;
  /** `latency` without the first 10% of steps (warm-up: JIT, and the sidecar still settling the attach). */
  readonly latencyAfterWarmup: Quantiles;
  /** Sidecar CPU in cores: mean over the stepping (first step sent → last health line), max over ~1 s samples. */
  readonly cpuCores: { readonly mean: number; readonly max: number };
  /** Sidecar RSS in MiB: one sample per second from start to end (0.1 MiB resolution). */
  readonly rssMiB: { readonly start: number; readonly max: number; readonly end: number; readonly series: readonly number[] };
  /** The synthetic gradients' true B_simple, and the sidecar's last smoothed estimate. */
  readonly bSimple: { readonly truth: number; readonly estimate: number | null };
}

const RUN = 'bench-ranks';
const MICRO_EXAMPLES = 16;
const TRUE_B_SIMPLE = 2000;
/** Distinct simulated steps, cycled: drawing fresh gradients for 256 ranks at 10 steps/s would measure the simulator. */
const POOL = 16;

function quantiles(values: readonly number[]): Quantiles {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
  return { samples: sorted.length, p50Ms: at(0.5), p99Ms: at(0.99), maxMs: sorted.at(-1) ?? Number.NaN };
}

/** CPU seconds (user + system) and RSS in MiB of a process, from /proc. */
function sampleProc(pid: number): { cpuSeconds: number; rssMiB: number } {
  const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? Number.NaN);
  return { cpuSeconds: cpuSeconds(pid), rssMiB: rssKiB / 1024 };
}

/** Every rank's messages for POOL simulated steps (step numbers filled in when sent). */
function simulatedPool(o: RanksLoadOptions) {
  const random = new SeededRandom(11);
  const layers = Array.from({ length: o.layers }, (_, i) => ({ name: `layer${i}`, numel: 8, gradSqNorm: 1 / o.layers, bSimple: TRUE_B_SIMPLE }));
  const source = gaussianGradients(random, layers);
  const layout = { name: RUN, microExamples: Array.from({ length: o.ranks }, () => Array<number>(o.microBatches).fill(MICRO_EXAMPLES)), allReduce: o.ranks > 1 };
  const pool = Array.from({ length: POOL }, (_, i) => simulateSyntheticStep(random, source, layout, i));
  return { layers: source.layers.map((l) => ({ name: l.name, numel: l.numel, kind: 'Linear' })), pool };
}

function stepMessages(step: number, simulated: ReturnType<typeof simulatedPool>['pool'][number], rank: number): RankMessage[] {
  const mine = simulated.ranks[rank]!;
  return [
    ...mine.microSqNorms.map((values, microBatch): RankMessage => ({ shard: { step, microBatch, examples: MICRO_EXAMPLES, sqNorms: { values: [...values] } } })),
    {
      stepEnd: {
        step,
        microBatches: mine.microSqNorms.length,
        localExamples: MICRO_EXAMPLES * mine.microSqNorms.length,
        globalExamples: simulated.globalExamples,
        accumulatedSqNorms: [...mine.accumulatedSqNorms],
        reducedSqNorms: mine.reducedSqNorms ? [...mine.reducedSqNorms] : [],
        lr: 0.1,
      },
    },
  ];
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

/** Milliseconds on a clock every process on this machine shares (sub-millisecond). */
const wallMs = () => performance.timeOrigin + performance.now();

export interface WorkerTask {
  readonly address: string;
  readonly options: RanksLoadOptions;
  /** Ranks [from, to) of the run. */
  readonly from: number;
  readonly to: number;
}

export interface WorkerResult {
  /** Per step: when this worker's last StepEnd was written (wallMs). */
  readonly stepEndAt: readonly number[];
  readonly lag: readonly number[];
  readonly duration: readonly number[];
  readonly refusals: number;
}

/** Attaches ranks [from, to) over one channel (one TCP connection) each, as separate rank processes would. */
export function attachRanks(task: WorkerTask) {
  const o = task.options;
  const { layers, pool } = simulatedPool(o);
  const Service = loadProto().noisescope.v1.NoiseScope;
  let refusals = 0;
  const ranks = Array.from({ length: task.to - task.from }, (_, i) => {
    const rank = task.from + i;
    const client: NoiseScopeClient = new Service(task.address, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
    const call: grpc.ClientDuplexStream<RankMessage, SidecarMessage__Output> = client.Attach();
    call.on('data', (m: SidecarMessage__Output) => void (m.refusal && refusals++));
    call.on('error', () => {});
    call.write({ hello: { protocolVersion: 1, run: RUN, rank, worldSize: o.ranks, layers, mode: 'MODE_NORMS', every: 1, optimizer: 'SGD' } } satisfies RankMessage);
    return { rank, client, call };
  });
  return {
    /** Sends every step, step i at startAt + i/rate (wallMs). */
    async run(startAt: number): Promise<WorkerResult> {
      const steps = Math.round(o.rate * o.seconds);
      const stepEndAt: number[] = [];
      const lag: number[] = [];
      const duration: number[] = [];
      for (let step = 0; step < steps; step++) {
        const due = startAt + (step * 1000) / o.rate;
        await sleep(due - wallMs());
        const began = wallMs();
        lag.push(Math.max(0, began - due)); // timers may fire a hair early
        const simulated = pool[step % POOL]!;
        for (const { rank, call } of ranks) for (const message of stepMessages(step, simulated, rank)) call.write(message);
        stepEndAt.push(wallMs());
        duration.push(wallMs() - began);
      }
      return { stepEndAt, lag, duration, refusals };
    },
    close() {
      for (const { client, call } of ranks) {
        call.end();
        client.close();
      }
    },
  };
}

/** A client process (src/bench/ranks-worker.ts) driving ranks [from, to). */
function startWorker(task: WorkerTask) {
  const child = fork(fileURLToPath(new URL(import.meta.url.endsWith('.ts') ? '../../dist/src/bench/ranks-worker.js' : './ranks-worker.js', import.meta.url)), [], { stdio: 'inherit' });
  const next = <T>(type: string) =>
    new Promise<T>((resolve, reject) => {
      child.once('message', (m: { type: string }) => (m.type === type ? resolve(m as T) : reject(new Error(`bench ranks: worker sent ${m.type}, expected ${type}`))));
      child.once('exit', (code) => reject(new Error(`bench ranks: worker exited with ${code}`)));
    });
  const attached = next<unknown>('attached');
  child.send({ type: 'task', task });
  return {
    attached,
    async run(startAt: number): Promise<WorkerResult> {
      const done = next<WorkerResult>('done');
      child.send({ type: 'go', startAt });
      return done;
    },
  };
}

export async function runRanksLoad(options: Partial<RanksLoadOptions> = {}): Promise<RanksLoadReport> {
  const o: RanksLoadOptions = { ...DEFAULT_RANKS_LOAD, ...options };
  const steps = Math.round(o.rate * o.seconds);

  const profile = o.profileDir === undefined ? [] : ['--cpu-prof', '--cpu-prof-dir', o.profileDir];
  const sidecar = spawn(process.execPath, [...profile, cliPath(), 'serve', '--port', '0', '--json', '--no-log', '--no-dashboard'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<void>((resolve) => sidecar.once('exit', () => resolve()));
  const pid = sidecar.pid!;
  // What the sidecar printed: when each step line arrived, the last health line, the run's ranks.
  const stepLineAt = new Map<number, { at: number; unixMs: number }>();
  const seen = { health: null as RanksLoadReport['health'] | null, healthLines: 0, ranksConnected: 0, estimate: null as number | null };
  const wake = new Set<() => void>();
  const until = async (ready: () => boolean, timeoutMs: number, what: string) => {
    const deadline = performance.now() + timeoutMs;
    while (!ready()) {
      if (performance.now() > deadline) throw new Error(`bench ranks: timed out waiting for ${what}`);
      await new Promise<void>((resolve) => {
        wake.add(resolve);
        setTimeout(resolve, 100);
      });
    }
  };
  let address = '';
  createInterface({ input: sidecar.stdout }).on('line', (line) => {
    const at = wallMs();
    const m = JSON.parse(line) as { type: string; [key: string]: unknown };
    if (m.type === 'listening') address = m.address as string;
    if (m.type === 'run' && m.run === RUN) seen.ranksConnected = m.ranksConnected as number;
    if (m.type === 'step' && m.run === RUN) {
      stepLineAt.set(m.step as number, { at, unixMs: m.unixMs as number });
      seen.estimate = ((m.smoothed as { bSimple?: number | null } | null)?.bSimple ?? null);
    }
    if (m.type === 'health') {
      const h = m as unknown as RanksLoadReport['health'];
      seen.health = { refused: h.refused, stepsIncomplete: h.stepsIncomplete, droppedByHooks: h.droppedByHooks, messages: h.messages };
      seen.healthLines++;
    }
    for (const resolve of wake) resolve();
    wake.clear();
  });

  const cpu: number[] = [];
  const rss: number[] = [];
  let sampling = true;
  const stalled: Awaited<ReturnType<typeof stalledWatch>>[] = [];
  try {
    await until(() => address !== '', 30_000, "the sidecar's listening line");
    for (let i = 0; i < (o.stalledWatchers ?? 0); i++) stalled.push(await stalledWatch(address));
    let last = { t: performance.now(), ...sampleProc(pid) };
    rss.push(last.rssMiB);
    const sampler = (async () => {
      while (sampling) {
        await sleep(1000);
        const now = { t: performance.now(), ...sampleProc(pid) };
        cpu.push((now.cpuSeconds - last.cpuSeconds) / ((now.t - last.t) / 1000));
        rss.push(now.rssMiB);
        last = now;
      }
    })();

    const n = Math.min(o.workers, o.ranks);
    const share = (w: number) => Math.floor((w * o.ranks) / n);
    const workers = Array.from({ length: n }, (_, w) => startWorker({ address, options: o, from: share(w), to: share(w + 1) }));
    await Promise.all(workers.map((w) => w.attached));
    await until(() => seen.ranksConnected === o.ranks, 60_000, `all ${o.ranks} ranks attached`);

    const start = performance.now();
    const before = sampleProc(pid);
    const startAt = wallMs() + 200; // every worker's first step, on the shared clock
    const sent = await Promise.all(workers.map((w) => w.run(startAt)));
    await until(() => stepLineAt.size >= steps, 10_000, 'the step lines').catch(() => {}); // missing ones are counted below
    // One more health line, so the counters include the last step.
    const healthLines = seen.healthLines;
    await until(() => seen.healthLines > healthLines, 5_000, 'a health line');
    const after = sampleProc(pid);
    const stepping = (performance.now() - start) / 1000;
    sampling = false;
    await sampler;

    // A step ends when its last rank's StepEnd is written, in whichever worker.
    const lines = sent[0]!.stepEndAt.flatMap((_, step) => {
      const line = stepLineAt.get(step);
      const ended = Math.max(...sent.map((w) => w.stepEndAt[step]!));
      return line === undefined ? [] : [{ step, read: line.at - ended, inSidecar: line.unixMs - ended }];
    });
    return {
      ...o,
      stepsSent: Math.min(...sent.map((w) => w.stepEndAt.length)),
      stepsCompleted: stepLineAt.size,
      refusals: sent.reduce((n, w) => n + w.refusals, 0),
      health: seen.health!,
      sendLag: quantiles(sent.flatMap((w) => w.lag)),
      sendDuration: quantiles(sent.flatMap((w) => w.duration)),
      latency: quantiles(lines.map((l) => l.read)),
      latencyInSidecar: quantiles(lines.map((l) => l.inSidecar)),
      latencyAfterWarmup: quantiles(lines.filter((l) => l.step >= steps / 10).map((l) => l.read)),
      cpuCores: { mean: (after.cpuSeconds - before.cpuSeconds) / stepping, max: Math.max(...cpu) },
      rssMiB: { start: rss[0]!, max: Math.max(...rss), end: rss.at(-1)!, series: rss.map((r) => Math.round(r * 10) / 10) },
      bSimple: { truth: TRUE_B_SIMPLE, estimate: seen.estimate },
    };
  } finally {
    sampling = false;
    for (const watcher of stalled) watcher.close();
    sidecar.kill('SIGTERM');
    await exited;
  }
}

const ms = (q: Quantiles) => `p50 ${q.p50Ms.toFixed(1)} ms, p99 ${q.p99Ms.toFixed(1)} ms, max ${q.maxMs.toFixed(1)} ms`;

export function formatRanksLoad(r: RanksLoadReport): string {
  return [
    `${r.ranks} ranks × ${r.rate} steps/s × ${r.seconds} s (norms mode, ${r.layers} layers, ${r.microBatches} micro-batches; ` +
      `sidecar in its own process, ranks from ${r.workers} client process${r.workers === 1 ? '' : 'es'} over real gRPC)`,
    `steps: ${r.stepsSent} sent, ${r.stepsCompleted} completed; refusals ${r.refusals} on the streams, ` +
      `health: refused ${r.health.refused}, incomplete ${r.health.stepsIncomplete}, dropped by hooks ${r.health.droppedByHooks}, messages ${r.health.messages}`,
    `sidecar CPU: mean ${r.cpuCores.mean.toFixed(2)} cores, max ${r.cpuCores.max.toFixed(2)} cores (1 s samples; target ≤ 1)`,
    `sidecar RSS: start ${r.rssMiB.start.toFixed(0)} MiB, max ${r.rssMiB.max.toFixed(0)} MiB, end ${r.rssMiB.end.toFixed(0)} MiB; ` +
      `per second: ${r.rssMiB.series.join(' ')}`,
    `step end (last rank's StepEnd written) → step line read: ${ms(r.latency)}; → stats in the sidecar (its unixMs): ${ms(r.latencyInSidecar)}`,
    `  after the first 10% of steps (warm-up): step end → step line read ${ms(r.latencyAfterWarmup)}`,
    `clients: writing one step for a worker's ranks took ${ms(r.sendDuration)}; start lag behind schedule ${ms(r.sendLag)}`,
    `B_simple: true ${r.bSimple.truth}, sidecar's smoothed estimate ${r.bSimple.estimate?.toFixed(0) ?? 'none'}`,
  ].join('\n');
}

/** `noisescope bench ranks [--ranks 256] [--rate 10] [--seconds 30] [--layers 50] [--micro-batches 2] [--workers 4] [--profile DIR] [--json]`; returns what to print. */
export async function runRanksLoadCommand(args: string[]): Promise<string> {
  const flags = { ranks: 'ranks', rate: 'rate', seconds: 'seconds', layers: 'layers', 'micro-batches': 'microBatches', workers: 'workers' } as const;
  const { values } = parseArgs({
    args,
    strict: true,
    options: { ...Object.fromEntries(Object.keys(flags).map((f) => [f, { type: 'string' }])), json: { type: 'boolean', default: false }, profile: { type: 'string' } } as Record<string, { type: 'string' | 'boolean' }>,
  });
  const options: Partial<Record<(typeof flags)[keyof typeof flags], number>> = {};
  for (const [flag, key] of Object.entries(flags)) {
    const text = values[flag];
    if (typeof text !== 'string') continue;
    const n = Number(text);
    const whole = key !== 'rate' && key !== 'seconds';
    if (!Number.isFinite(n) || n <= 0 || (whole && !Number.isInteger(n))) throw new UsageError(`--${flag} takes a positive ${whole ? 'whole ' : ''}number, got '${text}'`);
    options[key] = n;
  }
  const report = await runRanksLoad({ ...options, ...(typeof values.profile === 'string' ? { profileDir: values.profile } : {}) });
  return values.json ? JSON.stringify(report) : formatRanksLoad(report);
}
