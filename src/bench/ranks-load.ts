// `noisescope bench ranks`: N simulated ranks of one run, over real gRPC, into a
// sidecar in its own process (`serve --json`), paced to a step rate. The sidecar's
// CPU and RSS come from /proc/<pid> every second; completed steps, refusals and
// drops from its NDJSON step and health lines; step-end → step-line latency from
// the client's clock (the sidecar runs on the same machine).
import * as grpc from '@grpc/grpc-js';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { UsageError } from '../cli/flags.js';
import { loadProto } from '../transport/proto.js';
import type { NoiseScopeClient } from '../transport/generated/noisescope/v1/NoiseScope.js';
import type { RankMessage } from '../transport/generated/noisescope/v1/RankMessage.js';
import type { SidecarMessage__Output } from '../transport/generated/noisescope/v1/SidecarMessage.js';
import { gaussianGradients, SeededRandom, simulateSyntheticStep } from './synthetic-gradients.js';

export interface RanksLoadOptions {
  readonly ranks: number;
  /** Optimizer steps per second, every rank. */
  readonly rate: number;
  readonly seconds: number;
  readonly layers: number;
  readonly microBatches: number;
  /** Write a V8 CPU profile of the sidecar (node --cpu-prof) into this folder. */
  readonly profileDir?: string;
}

export const DEFAULT_RANKS_LOAD: RanksLoadOptions = { ranks: 256, rate: 10, seconds: 30, layers: 50, microBatches: 2 };

export interface Quantiles {
  readonly samples: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
}

export interface RanksLoadReport extends RanksLoadOptions {
  /** The simulated ranks all run in this one client process. */
  readonly clientProcesses: 1;
  readonly stepsSent: number;
  /** Distinct steps of the run the sidecar printed a step line for. */
  readonly stepsCompleted: number;
  /** Refusal messages the ranks received on their Attach streams. */
  readonly refusals: number;
  /** The sidecar's own counters, from its last health line. */
  readonly health: { readonly refused: number; readonly stepsIncomplete: number; readonly droppedByHooks: number; readonly messages: number };
  /** How late each step's sending began against its schedule (the client keeping up). */
  readonly sendLag: Quantiles;
  /** How long writing one step for every rank took in the client. */
  readonly sendDuration: Quantiles;
  /** Last rank's StepEnd written → the sidecar's step line read by this process. */
  readonly latency: Quantiles;
  /** Last rank's StepEnd written → the step's stats in the sidecar (the step line's unixMs; same machine, same clock; ms resolution). */
  readonly latencyInSidecar: Quantiles;
  /** Sidecar CPU in cores: mean over the stepping (first step sent → last health line), max over ~1 s samples. */
  readonly cpuCores: { readonly mean: number; readonly max: number };
  /** Sidecar RSS in MiB: one sample per second from start to end. */
  readonly rssMiB: { readonly start: number; readonly max: number; readonly end: number; readonly series: readonly number[] };
  /** The synthetic gradients' true B_simple, and the sidecar's last smoothed estimate. */
  readonly bSimple: { readonly truth: number; readonly estimate: number | null };
}

const RUN = 'bench-ranks';
const MICRO_EXAMPLES = 16;
const TRUE_B_SIMPLE = 2000;
/** Distinct simulated steps, cycled: drawing fresh gradients for 256 ranks at 10 steps/s would measure the simulator. */
const POOL = 16;
const CLOCK_TICKS = 100; // USER_HZ on Linux

function quantiles(values: readonly number[]): Quantiles {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
  return { samples: sorted.length, p50Ms: at(0.5), p99Ms: at(0.99), maxMs: sorted.at(-1) ?? Number.NaN };
}

/** CPU seconds (user + system) and RSS in MiB of a process, from /proc. */
function sampleProc(pid: number): { cpuSeconds: number; rssMiB: number } {
  // Fields after the command name (which may hold spaces) start at field 3: utime is 14, stime 15.
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const cpuSeconds = (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? Number.NaN);
  return { cpuSeconds, rssMiB: rssKiB / 1024 };
}

const cliPath = (): string =>
  fileURLToPath(new URL(import.meta.url.endsWith('.ts') ? '../../dist/src/cli.js' : '../cli.js', import.meta.url));

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

export async function runRanksLoad(options: Partial<RanksLoadOptions> = {}): Promise<RanksLoadReport> {
  const o: RanksLoadOptions = { ...DEFAULT_RANKS_LOAD, ...options };
  const steps = Math.round(o.rate * o.seconds);
  const { layers, pool } = simulatedPool(o);

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
    const at = performance.now();
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
  const clients: NoiseScopeClient[] = [];
  const calls: grpc.ClientDuplexStream<RankMessage, SidecarMessage__Output>[] = [];
  try {
    await until(() => address !== '', 30_000, "the sidecar's listening line");
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

    // One channel (one TCP connection) per rank, as separate rank processes would have.
    const Service = loadProto().noisescope.v1.NoiseScope;
    let refusals = 0;
    for (let rank = 0; rank < o.ranks; rank++) {
      const client = new Service(address, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
      const call = client.Attach();
      call.on('data', (m: SidecarMessage__Output) => void (m.refusal && refusals++));
      call.on('error', () => {});
      call.write({ hello: { protocolVersion: 1, run: RUN, rank, worldSize: o.ranks, layers, mode: 'MODE_NORMS', every: 1, optimizer: 'SGD' } } satisfies RankMessage);
      clients.push(client);
      calls.push(call);
    }
    await until(() => seen.ranksConnected === o.ranks, 60_000, `all ${o.ranks} ranks attached`);

    const stepEndAt: { at: number; unixMs: number }[] = [];
    const lag: number[] = [];
    const duration: number[] = [];
    const start = performance.now();
    const before = sampleProc(pid);
    for (let step = 0; step < steps; step++) {
      await sleep(start + (step * 1000) / o.rate - performance.now());
      const began = performance.now();
      lag.push(Math.max(0, began - (start + (step * 1000) / o.rate))); // timers may fire a hair early
      const simulated = pool[step % POOL]!;
      calls.forEach((call, rank) => {
        for (const message of stepMessages(step, simulated, rank)) call.write(message);
      });
      stepEndAt.push({ at: performance.now(), unixMs: Date.now() });
      duration.push(performance.now() - began);
    }
    await until(() => stepLineAt.size >= steps, 10_000, 'the step lines').catch(() => {}); // missing ones are counted below
    // One more health line, so the counters include the last step.
    const healthLines = seen.healthLines;
    await until(() => seen.healthLines > healthLines, 5_000, 'a health line');
    const after = sampleProc(pid);
    const stepping = (performance.now() - start) / 1000;
    sampling = false;
    await sampler;

    const lines = stepEndAt.flatMap((sent, step) => {
      const line = stepLineAt.get(step);
      return line === undefined ? [] : [{ read: line.at - sent.at, inSidecar: line.unixMs - sent.unixMs }];
    });
    return {
      ...o,
      clientProcesses: 1,
      stepsSent: steps,
      stepsCompleted: stepLineAt.size,
      refusals,
      health: seen.health!,
      sendLag: quantiles(lag),
      sendDuration: quantiles(duration),
      latency: quantiles(lines.map((l) => l.read)),
      latencyInSidecar: quantiles(lines.map((l) => l.inSidecar)),
      cpuCores: { mean: (after.cpuSeconds - before.cpuSeconds) / stepping, max: Math.max(...cpu) },
      rssMiB: { start: rss[0]!, max: Math.max(...rss), end: rss.at(-1)!, series: rss.map((r) => Math.round(r)) },
      bSimple: { truth: TRUE_B_SIMPLE, estimate: seen.estimate },
    };
  } finally {
    sampling = false;
    for (const call of calls) call.end();
    for (const client of clients) client.close();
    sidecar.kill('SIGTERM');
    await exited;
  }
}

const ms = (q: Quantiles) => `p50 ${q.p50Ms.toFixed(1)} ms, p99 ${q.p99Ms.toFixed(1)} ms, max ${q.maxMs.toFixed(1)} ms`;

export function formatRanksLoad(r: RanksLoadReport): string {
  return [
    `${r.ranks} ranks × ${r.rate} steps/s × ${r.seconds} s (norms mode, ${r.layers} layers, ${r.microBatches} micro-batches; ` +
      `sidecar in its own process, ranks from ${r.clientProcesses} client process over real gRPC)`,
    `steps: ${r.stepsSent} sent, ${r.stepsCompleted} completed; refusals ${r.refusals} on the streams, ` +
      `health: refused ${r.health.refused}, incomplete ${r.health.stepsIncomplete}, dropped by hooks ${r.health.droppedByHooks}, messages ${r.health.messages}`,
    `sidecar CPU: mean ${r.cpuCores.mean.toFixed(2)} cores, max ${r.cpuCores.max.toFixed(2)} cores (1 s samples; target ≤ 1)`,
    `sidecar RSS: start ${r.rssMiB.start.toFixed(0)} MiB, max ${r.rssMiB.max.toFixed(0)} MiB, end ${r.rssMiB.end.toFixed(0)} MiB; ` +
      `per second: ${r.rssMiB.series.join(' ')}`,
    `step end (last rank's StepEnd written) → step line read: ${ms(r.latency)}; → stats in the sidecar (its unixMs): ${ms(r.latencyInSidecar)}`,
    `client: sending one step for all ranks took ${ms(r.sendDuration)}; start lag behind schedule ${ms(r.sendLag)}`,
    `B_simple: true ${r.bSimple.truth}, sidecar's smoothed estimate ${r.bSimple.estimate?.toFixed(0) ?? 'none'}`,
  ].join('\n');
}

/** `noisescope bench ranks [--ranks 256] [--rate 10] [--seconds 30] [--layers 50] [--micro-batches 2] [--profile DIR] [--json]`; returns what to print. */
export async function runRanksLoadCommand(args: string[]): Promise<string> {
  const flags = { ranks: 'ranks', rate: 'rate', seconds: 'seconds', layers: 'layers', 'micro-batches': 'microBatches' } as const;
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
