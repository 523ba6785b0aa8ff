import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { protoRoot } from '../transport/proto.js';
import { startSidecar } from '../sidecar.js';
import type { SmoothingOptions } from '../stats/run-estimator.js';
import { formatRecommendation, formatSummary } from './format.js';
import { computeBackendLine, printSidecar } from './print-sidecar.js';
import type { BackendName } from '../compute/backends.js';
import { Subject } from 'rxjs';
import type { Sidecar } from '../sidecar.js';
import type { RunLogOptions } from '../runlog/write-run-log.js';
import type { BatchPolicy, Recommendation, StepStats } from '../types.js';

export interface DemoOptions {
  readonly port: number;
  readonly json: boolean;
  /** Show the Ink dashboard (a TTY); training output then goes to its last line, not the terminal. */
  readonly dashboard?: boolean;
  readonly smoothing: Partial<SmoothingOptions>;
  readonly policy?: Partial<BatchPolicy>;
  /** Where the run's NDJSON log goes; null or absent: no log. */
  readonly runLog?: RunLogOptions | null;
  readonly pythonArgs: readonly string[];
  /** Force this compute backend instead of the probe's choice. */
  readonly backend?: BackendName;
}

/** The project's Python (made by `npm run setup`), else python3 on PATH. */
function findPython(): string {
  const venv = join(dirname(protoRoot()), '.venv', 'bin', 'python');
  return existsSync(venv) ? venv : 'python3';
}

/** Starts a sidecar, trains the demo model through the hook, prints the live estimate. */
export async function runDemo(options: DemoOptions): Promise<number> {
  const sidecar = await startSidecar({
    port: options.port,
    smoothing: options.smoothing,
    ...(options.policy ? { policy: options.policy } : {}),
    ...(options.runLog ? { runLog: options.runLog } : {}),
    ...(options.backend !== undefined ? { backend: options.backend } : {}),
  });
  if (options.dashboard) return runDemoDashboard(sidecar, options);
  const write = (line: string) => process.stdout.write(`${line}\n`);
  write(options.json ? JSON.stringify({ type: 'listening', address: sidecar.address }) : `noisescope listening on ${sidecar.address}`);
  if (options.runLog) {
    write(options.json ? JSON.stringify({ type: 'run-log', path: options.runLog.dir }) : `noisescope logging runs to ${options.runLog.dir}`);
  }
  write(computeBackendLine(sidecar, options.json));
  const printing = printSidecar(sidecar, options.json, write);
  let last: StepStats | null = null;
  const keepLast = sidecar.stats$.subscribe((s) => (last = s));
  // The advice standing at the end is what a user came for: repeat it under the summary.
  let advice: Recommendation | null = null;
  const keepAdvice = sidecar.recommendations$.subscribe((r) => (advice = r));
  const python = findPython();
  const child = spawn(python, ['-m', 'noisescope.demo', '--address', sidecar.address, ...options.pythonArgs], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  // Training output goes to stderr-side lines so --json stdout stays NDJSON.
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    for (const line of chunk.split('\n')) if (line) process.stderr.write(`train │ ${line}\n`);
  });
  const code = await new Promise<number>((resolve) => {
    child.on('error', (error) => {
      process.stderr.write(`noisescope demo: cannot run ${python}: ${error.message} (run \`npm run setup\`)\n`);
      resolve(1);
    });
    child.on('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0)));
  });
  printing.unsubscribe();
  keepLast.unsubscribe();
  keepAdvice.unsubscribe();
  await sidecar.close();
  if (last && !options.json) write(`\n${formatSummary(last)}`);
  if (advice && !options.json) write(`  Standing advice: ${formatRecommendation(advice)}`);
  return code;
}

/** The demo under the dashboard: training lines feed its log line; q (or the end of training, then q) closes. */
async function runDemoDashboard(sidecar: Sidecar, options: DemoOptions): Promise<number> {
  const { renderDashboard } = await import('../../tui/render-dashboard.js');
  const log = new Subject<string>();
  let last: StepStats | null = null;
  const keepLast = sidecar.stats$.subscribe((s) => (last = s));
  let advice: Recommendation | null = null;
  const keepAdvice = sidecar.recommendations$.subscribe((r) => (advice = r));
  const ink = renderDashboard({ ...sidecar, log$: log.asObservable() }, { address: `listening on ${sidecar.address}` });
  const python = findPython();
  const child = spawn(python, ['-m', 'noisescope.demo', '--address', sidecar.address, ...options.pythonArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let lastLine = '';
  const toLog = (chunk: string) => {
    for (const line of chunk.split('\n')) if (line.trim()) log.next((lastLine = `train: ${line.trim()}`));
  };
  child.stdout.setEncoding('utf8').on('data', toLog);
  child.stderr.setEncoding('utf8').on('data', toLog);
  let code = 0;
  const trained = new Promise<void>((resolve) => {
    child.on('error', (error) => {
      log.next(`cannot run ${python}: ${error.message} (run \`npm run setup\`)`);
      code = 1;
      resolve();
    });
    child.on('exit', (c, signal) => {
      code = c ?? (signal ? 1 : 0);
      // Short, so the training's last line and its end fit beside "q quit  ? help" in 80 columns.
      log.next(`${lastLine ? `${lastLine} · ` : 'training '}exit ${code}`);
      resolve();
    });
  });
  await ink.waitUntilExit();
  if (child.exitCode === null) child.kill('SIGTERM');
  await trained;
  ink.unmount();
  keepLast.unsubscribe();
  keepAdvice.unsubscribe();
  await sidecar.close();
  if (last) process.stdout.write(`\n${formatSummary(last)}\n`);
  if (advice) process.stdout.write(`  Standing advice: ${formatRecommendation(advice)}\n`);
  return code;
}
