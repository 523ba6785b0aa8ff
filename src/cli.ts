#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { printSidecar } from './cli/print-sidecar.js';
import { runDemo } from './cli/demo.js';
import { DEFAULT_PORT, startSidecar } from './sidecar.js';

const USAGE = `noisescope — live gradient noise scale and batch-size advice for PyTorch training

Usage:
  noisescope serve [--host 127.0.0.1] [--port ${DEFAULT_PORT}] [--json] [--no-dashboard] [--beta 0.99] [--confidence 0.95]
      Start the sidecar. In a terminal it shows the live dashboard (q quits, ? helps);
      otherwise, or with --no-dashboard, one line per measured step (NDJSON with --json).
  noisescope dashboard [--address 127.0.0.1:${DEFAULT_PORT}] [--run NAME]
      Attach the dashboard to a running sidecar through its Watch stream.
  noisescope demo [--port 0] [--json] [--no-dashboard] [-- <python demo args>]
      Start a sidecar and train a small MLP on scikit-learn's digits through the hook.
  noisescope bench accuracy
      Estimator accuracy and interval coverage on synthetic gradients with known G and Σ.
  noisescope bench latency
      Step end → StepStats on stats$ over real gRPC (norms mode), p50/p99.
  noisescope bench dashboard
      Dashboard CPU per frame at 20 updates/s; step latency with and without a dashboard open.

In Python:  ns = noisescope.watch(model, optimizer)   # one line; see README.md
`;

class UsageError extends Error {
  override name = 'UsageError';
}

function numberOption(value: string | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got '${value}'`);
  return n;
}

function portOption(value: string | undefined, fallback: number): number {
  const port = numberOption(value, 'port', fallback);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--port must be 0..65535, got '${value}'`);
  return port;
}

const SERVE_OPTIONS = {
  host: { type: 'string' },
  port: { type: 'string' },
  json: { type: 'boolean', default: false },
  'no-dashboard': { type: 'boolean', default: false },
  beta: { type: 'string' },
  confidence: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

async function serve(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: SERVE_OPTIONS, strict: true });
  if (values.help) return void process.stdout.write(USAGE);
  const sidecar = await startSidecar({
    host: values.host ?? '127.0.0.1',
    port: portOption(values.port, DEFAULT_PORT),
    smoothing: smoothingFrom(values),
  });
  const write = (line: string) => process.stdout.write(`${line}\n`);
  write(values.json ? JSON.stringify({ type: 'listening', address: sidecar.address }) : `noisescope listening on ${sidecar.address}`);
  if (wantsDashboard(values)) {
    const { renderDashboard } = await import('../tui/render-dashboard.js');
    const ink = renderDashboard(sidecar, { address: `listening on ${sidecar.address}` });
    await Promise.race([ink.waitUntilExit(), untilSignal()]);
    ink.unmount();
    await sidecar.close();
    return;
  }
  const printing = printSidecar(sidecar, values.json, write);
  await untilSignal();
  printing.unsubscribe();
  await sidecar.close();
}

function untilSignal(): Promise<void> {
  return new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}

/** Ink draws no live frames under CI (it checks the CI variable), so CI gets the lines. */
const inCi = (): boolean => Boolean(process.env.CI) && process.env.CI !== '0' && process.env.CI !== 'false';

/** The dashboard needs a terminal on both ends; --json and --no-dashboard keep the lines. */
function wantsDashboard(values: { json: boolean; 'no-dashboard': boolean }): boolean {
  return (
    !values.json && !values['no-dashboard'] && Boolean(process.stdout.isTTY) && Boolean(process.stdin.isTTY) && !inCi()
  );
}

const DASHBOARD_OPTIONS = {
  address: { type: 'string' },
  run: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

async function dashboard(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: DASHBOARD_OPTIONS, strict: true });
  if (values.help) return void process.stdout.write(USAGE);
  const address = values.address ?? `127.0.0.1:${DEFAULT_PORT}`;
  if (!/^[^\s:]+:\d+$/.test(address)) throw new UsageError(`--address must be host:port, got '${address}'`);
  if (!process.stdout.isTTY || !process.stdin.isTTY) throw new UsageError('the dashboard needs a terminal (use `serve --json` for scripts)');
  if (inCi()) throw new UsageError('the dashboard draws nothing while the CI variable is set (unset CI, or use `serve --json`)');
  const { watchSidecar } = await import('./remote/watch-client.js');
  const { renderDashboard } = await import('../tui/render-dashboard.js');
  const remote = watchSidecar(address, values.run !== undefined ? { run: values.run } : {});
  const ink = renderDashboard(remote, { address: `watching ${address}` });
  await Promise.race([ink.waitUntilExit(), untilSignal()]);
  ink.unmount();
  remote.close();
}

function smoothingFrom(values: { beta?: string | undefined; confidence?: string | undefined }) {
  return {
    ...(values.beta !== undefined ? { beta: numberOption(values.beta, 'beta', 0) } : {}),
    ...(values.confidence !== undefined ? { confidence: numberOption(values.confidence, 'confidence', 0) } : {}),
  };
}

async function demo(args: string[]): Promise<void> {
  const split = args.indexOf('--');
  const own = split >= 0 ? args.slice(0, split) : args;
  const pythonArgs = split >= 0 ? args.slice(split + 1) : [];
  const { values } = parseArgs({ args: own, options: SERVE_OPTIONS, strict: true });
  if (values.help) return void process.stdout.write(USAGE);
  process.exitCode = await runDemo({
    port: portOption(values.port, 0),
    json: values.json,
    dashboard: wantsDashboard(values),
    smoothing: smoothingFrom(values),
    pythonArgs,
  });
}

async function bench(args: string[]): Promise<void> {
  const [which] = args;
  if (which === 'accuracy') {
    const { runSyntheticAccuracy } = await import('./bench/synthetic-accuracy.js');
    process.stdout.write(`${runSyntheticAccuracy()}\n`);
    return;
  }
  if (which === 'latency') {
    const { formatLatency, runStepLatency } = await import('./bench/step-latency.js');
    process.stdout.write(`${formatLatency(await runStepLatency())}\n`);
    return;
  }
  if (which === 'dashboard') {
    const { runDashboardBench } = await import('./cli/bench-dashboard.js');
    process.stdout.write(`${await runDashboardBench()}\n`);
    return;
  }
  throw new UsageError(`unknown benchmark '${which ?? ''}': try 'noisescope bench accuracy', 'latency' or 'dashboard'`);
}

async function main(argv: string[]): Promise<void> {
  // React (loaded with the dashboard) picks its build from this: the development one is several times slower.
  process.env.NODE_ENV ??= 'production';
  const [command, ...rest] = argv;
  switch (command) {
    case 'serve':
      return serve(rest);
    case 'dashboard':
      return dashboard(rest);
    case 'demo':
      return demo(rest);
    case 'bench':
      return bench(rest);
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return;
    default:
      throw new UsageError(`unknown command '${command}'`);
  }
}

main(process.argv.slice(2)).catch((error: unknown) => {
  const usage = error instanceof UsageError || error instanceof RangeError || (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS');
  process.stderr.write(`noisescope: ${(error as Error).message ?? String(error)}\n${usage ? `\n${USAGE}` : ''}`);
  process.exitCode = usage ? 2 : 1;
});
