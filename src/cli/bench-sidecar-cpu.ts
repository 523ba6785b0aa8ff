// `noisescope bench sidecar-cpu`: the sidecar's CPU per measured step in norms mode, alone.
// One rank streams paced StepBundles (as the hook sends them) over real gRPC into a real
// `serve --json --no-log` process (bench_overhead.py's sidecar); CPU comes from /proc/<pid>.
import * as grpc from '@grpc/grpc-js';
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { cliPath, cpuSeconds } from '../bench/bench-process.js';
import { loadProto } from '../transport/proto.js';
import type { NoiseScopeClient } from '../transport/generated/noisescope/v1/NoiseScope.js';
import type { RankMessage } from '../transport/generated/noisescope/v1/RankMessage.js';
import { UsageError } from './flags.js';

export interface SidecarCpuOptions {
  readonly layers: number;
  readonly steps: number;
  /** Steps per second sent (the hook on a 2.6 ms step sends ~385). */
  readonly rate: number;
  readonly microBatches: number;
  /** Write the sidecar's V8 CPU profile (node --cpu-prof) into this folder. */
  readonly profileDir?: string;
}

export interface SidecarCpuReport extends SidecarCpuOptions {
  readonly stepsCompleted: number;
  /** Sidecar CPU (user + system) from the first step sent to the last step line, per step. */
  readonly cpuUsPerStep: number;
  /** The part of it on the JavaScript thread (the rest: GC helpers, libuv, compute workers). */
  readonly mainThreadUsPerStep: number;
  /** CPU µs per step over each quarter of the steps (JIT warm-up shows as a falling series). */
  readonly quartersUsPerStep: readonly number[];
  /** The sidecar's CPU while idle (before the first step), in µs per second: its timers and health lines. */
  readonly idleUsPerSecond: number;
  readonly seconds: number;
}

const RUN = 'bench-sidecar-cpu';
const EXAMPLES = 64;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

/** A step's bundle: one shard per micro-batch and the StepEnd, norms varying a little per step. */
function bundle(step: number, o: SidecarCpuOptions): RankMessage {
  const norms = (j: number) => Array.from({ length: o.layers }, (_, l) => 1 + 0.1 * Math.sin(step * 7 + j * 3 + l));
  const shards = Array.from({ length: o.microBatches }, (_, j) => ({ step, microBatch: j, examples: EXAMPLES, sqNorms: { values: norms(j) } }));
  const accumulated = norms(o.microBatches).map((v) => v * 0.6);
  const local = EXAMPLES * o.microBatches;
  return {
    bundle: {
      shards,
      end: { step, microBatches: o.microBatches, localExamples: local, globalExamples: local, accumulatedSqNorms: accumulated, lr: 0.01, loss: Number.NaN, unixMs: Date.now() },
    },
  };
}

export async function runSidecarCpu(o: SidecarCpuOptions): Promise<SidecarCpuReport> {
  const profile = o.profileDir === undefined ? [] : ['--cpu-prof', '--cpu-prof-interval', '100', '--cpu-prof-dir', o.profileDir];
  // Its stdout goes to a file, as bench_overhead.py's goes to /dev/null (a pipe would wake this process per line).
  const dir = mkdtempSync(join(tmpdir(), 'noisescope-sidecar-cpu-'));
  const out = openSync(join(dir, 'stdout.ndjson'), 'w+');
  const sidecar = spawn(process.execPath, [...profile, cliPath(), 'serve', '--port', '0', '--json', '--no-log'], { stdio: ['ignore', out, 'inherit'] });
  const exited = new Promise<void>((resolve) => sidecar.once('exit', () => resolve()));
  const pid = sidecar.pid!;
  let address = '';
  let stepLines = 0;
  let attached = false;
  let offset = 0;
  let partial = '';
  const chunk = Buffer.alloc(1 << 20);
  const readLines = () => {
    for (let n; (n = readSync(out, chunk, 0, chunk.length, offset)) > 0; offset += n) {
      const lines = (partial + chunk.toString('utf8', 0, n)).split('\n');
      partial = lines.pop()!;
      for (const line of lines) {
        const m = JSON.parse(line) as { type: string; run?: string; ranksConnected?: number; address?: string };
        if (m.type === 'listening') address = m.address!;
        if (m.type === 'run' && m.run === RUN && m.ranksConnected === 1) attached = true;
        if (m.type === 'step' && m.run === RUN) stepLines++;
      }
    }
  };
  const until = async (ready: () => boolean, timeoutMs: number, what: string) => {
    const deadline = performance.now() + timeoutMs;
    for (readLines(); !ready(); readLines()) {
      if (sidecar.exitCode !== null || performance.now() > deadline) throw new Error(`bench sidecar-cpu: no ${what}`);
      await sleep(20);
    }
  };
  let client: NoiseScopeClient | undefined;
  try {
    await until(() => address !== '', 30_000, 'listening line from the sidecar');
    const Service = loadProto().noisescope.v1.NoiseScope;
    client = new Service(address, grpc.credentials.createInsecure());
    const call = client.Attach();
    call.on('data', () => {});
    call.on('error', () => {});
    const layers = Array.from({ length: o.layers }, (_, i) => ({ name: `net.${i}.weight`, numel: 1000, kind: 'Linear' }));
    const source = o.microBatches > 1 ? 'SOURCE_ACCUMULATION' : 'SOURCE_NONE';
    call.write({ hello: { protocolVersion: 1, run: RUN, rank: 0, worldSize: 1, layers, mode: 'MODE_NORMS', source, every: 1, optimizer: 'SGD', session: 'bench' } } satisfies RankMessage);
    await until(() => attached, 10_000, 'run line for the attached rank');
    // Warm-up (JIT, first-step work), then the idle rate, then the measured steps.
    const warmup = Math.min(200, o.steps);
    for (let step = 0; step < warmup; step++) {
      call.write(bundle(step, o));
      if (step % 10 === 9) await sleep(10);
    }
    await until(() => stepLines >= warmup, 30_000, 'step lines for the warm-up');
    await sleep(300);
    const idleFrom = { t: performance.now(), cpu: cpuSeconds(pid) };
    await sleep(1000);
    const idleUsPerSecond = ((cpuSeconds(pid) - idleFrom.cpu) * 1e6) / ((performance.now() - idleFrom.t) / 1000);
    const from = { t: performance.now(), cpu: cpuSeconds(pid), main: cpuSeconds(pid, pid) };
    // Paced in 10 ms slices (timers are coarser than a step).
    const slice = 10;
    // CPU at each quarter of the steps sent: V8 optimises the hot path for thousands of steps.
    const quarters: number[] = [from.cpu];
    for (let sent = 0; sent < o.steps; ) {
      const due = Math.min(o.steps, Math.round(((performance.now() - from.t + slice) * o.rate) / 1000));
      for (; sent < due; sent++) {
        call.write(bundle(warmup + sent, o));
        if (quarters.length < 4 && sent + 1 === Math.round((quarters.length * o.steps) / 4)) quarters.push(cpuSeconds(pid));
      }
      await sleep(slice);
    }
    await until(() => stepLines >= warmup + o.steps, 60_000, 'step line for every step');
    // The JS thread's window lies inside the process's (read after it at the start, before it at the end).
    const main = cpuSeconds(pid, pid) - from.main;
    quarters.push(cpuSeconds(pid));
    const quartersUsPerStep = quarters.slice(1).map((cpu, i) => ((cpu - quarters[i]!) * 1e6) / (o.steps / 4));
    const cpu = quarters.at(-1)! - from.cpu;
    const seconds = (performance.now() - from.t) / 1000;
    call.end();
    return { ...o, stepsCompleted: stepLines - warmup, cpuUsPerStep: (cpu * 1e6) / o.steps, mainThreadUsPerStep: (main * 1e6) / o.steps, quartersUsPerStep, idleUsPerSecond, seconds };
  } finally {
    client?.close();
    sidecar.kill('SIGTERM');
    await exited;
    closeSync(out);
    rmSync(dir, { recursive: true, force: true });
  }
}

export function formatSidecarCpu(r: SidecarCpuReport): string {
  return (
    `${r.layers} layers, ${r.microBatches} micro-batch${r.microBatches === 1 ? '' : 'es'}, ${r.stepsCompleted}/${r.steps} steps at ${r.rate}/s: ` +
    `sidecar CPU ${r.cpuUsPerStep.toFixed(0)} µs per step, ${r.mainThreadUsPerStep.toFixed(0)} µs on its JS thread (idle ${(r.idleUsPerSecond / 1000).toFixed(1)} ms/s, over ${r.seconds.toFixed(1)} s); ` +
    `by quarter of the steps ${r.quartersUsPerStep.map((us) => us.toFixed(0)).join(' → ')} µs`
  );
}

/** `noisescope bench sidecar-cpu [--layers 6,100] [--steps 12000] [--rate 300] [--micro-batches 1] [--profile DIR] [--json]`. */
export async function runSidecarCpuCommand(args: string[]): Promise<string> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      layers: { type: 'string', default: '6,100' },
      steps: { type: 'string', default: '12000' },
      rate: { type: 'string', default: '300' },
      'micro-batches': { type: 'string', default: '1' },
      profile: { type: 'string' },
      json: { type: 'boolean', default: false },
    },
  });
  const positive = (flag: string, text: string): number => {
    const n = Number(text);
    if (!Number.isInteger(n) || n <= 0) throw new UsageError(`--${flag} takes a positive whole number, got '${text}'`);
    return n;
  };
  const steps = positive('steps', values.steps);
  const rate = positive('rate', values.rate);
  const microBatches = positive('micro-batches', values['micro-batches']);
  const reports: SidecarCpuReport[] = [];
  for (const text of values.layers.split(',')) {
    const layers = positive('layers', text);
    reports.push(await runSidecarCpu({ layers, steps, rate, microBatches, ...(values.profile === undefined ? {} : { profileDir: values.profile }) }));
  }
  return values.json ? JSON.stringify(reports) : reports.map(formatSidecarCpu).join('\n');
}
