// `noisescope bench fuzz [--cases 5000] [--seed 1] [--only I] [--json]`: the fuzzer (fuzz-grpc.ts)
// against a sidecar in its own process (`serve --json`), then a well-behaved rank trains through the
// same sidecar and its step statistics are checked against the two-batch formulas; the sidecar must
// still be running and have written nothing to stderr.
import * as grpc from '@grpc/grpc-js';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { UsageError } from '../cli/flags.js';
import { cliPath } from './bench-process.js';
import { loadProto } from '../transport/proto.js';
import type { NoiseScopeClient } from '../transport/generated/noisescope/v1/NoiseScope.js';
import type { RankMessage } from '../transport/generated/noisescope/v1/RankMessage.js';
import { DEFAULT_FUZZ, formatFuzzReport, fuzzSidecar, type FuzzReport } from './fuzz-grpc.js';

/** A small runs limit so the floods reach it (and ended runs are forgotten to make room). */
const MAX_RUNS = 64;
const MICRO = [
  [4, 1, 2],
  [5, 1.2, 2.5],
];
const ACCUMULATED = [16, 4.4, 8.4];
const EXAMPLES = 16;

export interface FuzzCommandReport extends FuzzReport {
  /** The sidecar process was still running after the fuzz and the good rank. */
  readonly sidecarAlive: boolean;
  readonly sidecarStderr: string;
  /** Steps of the well-behaved rank whose raw |G|² and tr(Σ) matched the two-batch formulas (of 3). */
  readonly goodSteps: number;
}

const close = (a: number, b: number) => Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(b));

export async function runFuzzCommand(args: string[]): Promise<string> {
  const { values } = parseArgs({ args, strict: true, options: { cases: { type: 'string' }, seed: { type: 'string' }, only: { type: 'string' }, json: { type: 'boolean', default: false } } });
  const whole = (flag: 'cases' | 'seed' | 'only', min: number): number | undefined => {
    const text = values[flag];
    if (text === undefined) return undefined;
    const n = Number(text);
    if (text.trim() === '' || !Number.isSafeInteger(n) || n < min) throw new UsageError(`--${flag} takes a whole number ≥ ${min}, got '${text}'`);
    return n;
  };
  const cases = whole('cases', 1) ?? DEFAULT_FUZZ.cases;
  const seed = whole('seed', 0) ?? DEFAULT_FUZZ.seed;
  const only = whole('only', 0);

  const sidecar = spawn(process.execPath, [cliPath(), 'serve', '--port', '0', '--json', '--no-log', '--no-dashboard', '--max-runs', String(MAX_RUNS)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  sidecar.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  let alive = true;
  sidecar.once('exit', () => (alive = false));
  const lines: { type: string; [key: string]: unknown }[] = [];
  createInterface({ input: sidecar.stdout }).on('line', (line) => lines.push(JSON.parse(line) as { type: string }));
  const waitFor = async <T>(find: () => T | undefined, what: string): Promise<T> => {
    for (let i = 0; i < 300; i++) {
      const found = find();
      if (found !== undefined) return found;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    throw new Error(`bench fuzz: timed out waiting for ${what}`);
  };
  try {
    const address = await waitFor(() => lines.find((l) => l.type === 'listening')?.address as string | undefined, "the sidecar's listening line");
    const report = await fuzzSidecar(address, { seed, cases, ...(only !== undefined ? { only } : {}) });
    const goodSteps = await trainWellBehaved(address, () => lines, waitFor);
    const result: FuzzCommandReport = { ...report, sidecarAlive: alive, sidecarStderr: stderr, goodSteps };
    if (values.json) return JSON.stringify(result);
    return [
      formatFuzzReport(report),
      `sidecar: ${alive ? 'still running' : 'EXITED'}, stderr ${stderr === '' ? 'empty' : `:\n${stderr}`}`,
      `afterwards a well-behaved rank: ${goodSteps} of 3 steps with exact |G|² and tr(Σ)`,
    ].join('\n');
  } finally {
    sidecar.kill('SIGTERM');
  }
}

/** Trains 3 accumulation steps of a fresh run; how many step lines carry the exact two-batch estimates. */
async function trainWellBehaved(address: string, lines: () => readonly { type: string; [key: string]: unknown }[], waitFor: <T>(find: () => T | undefined, what: string) => Promise<T>): Promise<number> {
  const Service = loadProto().noisescope.v1.NoiseScope;
  const client: NoiseScopeClient = new Service(address, grpc.credentials.createInsecure());
  const call = client.Attach();
  call.on('error', () => {});
  call.on('data', () => {});
  const run = 'after-fuzz';
  const layers = MICRO[0]!.map((_, i) => ({ name: `layer${i}`, numel: 100, kind: 'Linear' }));
  call.write({ hello: { protocolVersion: 1, run, rank: 0, worldSize: 1, layers, mode: 'MODE_NORMS', every: 1, session: 'good' } } satisfies RankMessage);
  for (let step = 0; step < 3; step++) {
    MICRO.forEach((values, microBatch) => call.write({ shard: { step, microBatch, examples: EXAMPLES, sqNorms: { values } } } satisfies RankMessage));
    call.write({ stepEnd: { step, microBatches: 2, localExamples: 2 * EXAMPLES, accumulatedSqNorms: ACCUMULATED, lr: 0.1 } } satisfies RankMessage);
  }
  try {
    const steps = await waitFor(() => {
      const mine = lines().filter((l) => l.type === 'step' && l.run === run);
      return mine.length >= 3 ? mine : undefined;
    }, 'the well-behaved rank’s steps');
    // Two scales, micro-batch (b = 16) and accumulated (B = 32), in the optimizer's units (micro-batch i is k·h_i).
    const ySmall = (4 * MICRO.flat().reduce((a, b) => a + b, 0)) / 2;
    const yBig = ACCUMULATED.reduce((a, b) => a + b, 0);
    const traceSigma = (ySmall - yBig) / (1 / 16 - 1 / 32);
    const gradSqNorm = (32 * yBig - 16 * ySmall) / (32 - 16);
    return steps.filter((s) => {
      const raw = s.raw as { traceSigma: number; gradSqNorm: number } | null;
      return raw !== null && close(raw.traceSigma, traceSigma) && close(raw.gradSqNorm, gradSqNorm);
    }).length;
  } finally {
    call.end();
    client.close();
  }
}
