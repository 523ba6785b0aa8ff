import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { protoRoot } from '../transport/proto.js';
import { startSidecar } from '../sidecar.js';
import type { SmoothingOptions } from '../stats/run-estimator.js';
import { formatSummary } from './format.js';
import { printSidecar } from './print-sidecar.js';
import type { StepStats } from '../types.js';

export interface DemoOptions {
  readonly port: number;
  readonly json: boolean;
  readonly smoothing: Partial<SmoothingOptions>;
  readonly pythonArgs: readonly string[];
}

/** The project's Python (made by `npm run setup`), else python3 on PATH. */
function findPython(): string {
  const venv = join(dirname(protoRoot()), '.venv', 'bin', 'python');
  return existsSync(venv) ? venv : 'python3';
}

/** Starts a sidecar, trains the demo model through the hook, prints the live estimate. */
export async function runDemo(options: DemoOptions): Promise<number> {
  const sidecar = await startSidecar({ port: options.port, smoothing: options.smoothing });
  const write = (line: string) => process.stdout.write(`${line}\n`);
  write(options.json ? JSON.stringify({ type: 'listening', address: sidecar.address }) : `noisescope listening on ${sidecar.address}`);
  const printing = printSidecar(sidecar, options.json, write);
  let last: StepStats | null = null;
  const keepLast = sidecar.stats$.subscribe((s) => (last = s));
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
  await sidecar.close();
  if (last && !options.json) write(`\n${formatSummary(last)}`);
  return code;
}
