#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { computeBackendLine, printSidecar } from './cli/print-sidecar.js';
import { lineBatch } from './cli/line-batch.js';
import { runDemo } from './cli/demo.js';
import { replay, REPLAY_USAGE } from './cli/replay.js';
import { report, REPORT_USAGE } from './report/report-command.js';
import { backendFromFlags, partialStepTimeoutFromFlags, policyFromFlags, portOption, SIDECAR_FLAGS, smoothingFromFlags, UsageError } from './cli/flags.js';
import { BACKEND_NAMES } from './compute/backends.js';
import { DEFAULT_BATCH_POLICY } from './recommend/batch-policy.js';
import { RUN_LOG_FLAGS, runLogFromFlags } from './runlog/run-log-flags.js';
import { LIMIT_FLAGS, LIMIT_USAGE, limitsFromFlags } from './cli/limit-flags.js';
import { DEFAULT_PORT, startSidecar } from './sidecar.js';
import { DEFAULT_SMOOTHING } from './stats/run-estimator.js';
import { isLoopback } from './transport/server.js';
import { CLIENT_SECURITY_FLAGS, clientSecurityFromFlags, SERVE_SECURITY_FLAGS, serveSecurityFromFlags } from './transport/security-flags.js';

const USAGE = `noisescope — live gradient noise scale and batch-size advice for PyTorch training

Usage:
  noisescope serve [--host 127.0.0.1] [--port ${DEFAULT_PORT}] [--json] [--no-dashboard] [--log-dir DIR | --no-log] [--backend NAME] [smoothing] [policy]
      Start the sidecar. In a terminal it shows the live dashboard (q quits, ? helps);
      otherwise, or with --no-dashboard, one line per measured step and per
      recommendation (NDJSON with --json). Each run is appended to DIR/<run>.ndjson
      (default $NOISESCOPE_LOG_DIR, else $XDG_DATA_HOME/noisescope/runs or ~/.local/share/noisescope/runs).
    smoothing: [--beta ${DEFAULT_SMOOTHING.beta}] [--confidence ${DEFAULT_SMOOTHING.confidence}] [--temperature-tolerance ${DEFAULT_SMOOTHING.temperatureTolerance}]
      EMA decay; interval confidence; relative move of lr/B that restarts the smoothing (Infinity: never).
    policy (defaults for every run; a run's hook may override them):
      [--objective balanced|time|compute]  target batch = B_noise × 1 | 4 | 1/4   (default balanced)
      [--min-batch N] [--max-batch N]       global examples per optimizer step   (default 1, unbounded)
      [--max-micro-batch N]                 examples per device per micro-batch  (default: keep the run's)
      [--max-factor X]                      at most this factor per change, > 1  (default ${DEFAULT_BATCH_POLICY.maxFactor})
      [--window N]                          measured steps the evidence must hold before a change (default ${DEFAULT_BATCH_POLICY.window})
      [--monotone]                          only ever recommend larger batches
    [--backend NAME]  compute backend for dense shards: ${BACKEND_NAMES.join(' | ')}
                      (default: the fastest that passes the start-up probe)
    [--partial-step-timeout S]  a step some but not all ranks ended is excluded S seconds after its first
                      end, and a rank whose stream ended without Goodbye is declared gone after S (default 30)
${LIMIT_USAGE}
    security (any --host other than loopback needs a token):
      [--token-file PATH | --token TOKEN]   every call must send 'authorization: Bearer <token>'
                                            (default $NOISESCOPE_TOKEN; at least 16 characters)
      [--run-token RUN=PATH]...             a token that opens only run RUN (Attach its ranks, Watch it)
      [--tls-cert PEM --tls-key PEM]        serve TLS; [--tls-client-ca PEM] also requires client certificates
  noisescope dashboard [--address 127.0.0.1:${DEFAULT_PORT}] [--run NAME] [--token-file PATH | --token TOKEN]
                       [--tls-ca PEM] [--tls-cert PEM --tls-key PEM] [--tls-server-name NAME]
      Attach the dashboard to a running sidecar through its Watch stream
      (token default $NOISESCOPE_TOKEN; TLS files default $NOISESCOPE_TLS_CA, _CERT, _KEY; --tls-server-name,
      default $NOISESCOPE_TLS_SERVER_NAME: the name to check the sidecar's certificate for when it names another host).
  noisescope demo [--port 0] [--json] [--no-dashboard] [--adaptive] [--log-dir DIR | --no-log] [--backend NAME] [smoothing] [policy] [-- <python demo args>]
      Start a sidecar and train a small MLP on scikit-learn's digits through the hook;
      --adaptive lets the training apply each recommendation (gradient accumulation).
${REPLAY_USAGE}
${REPORT_USAGE}
  noisescope bench accuracy
      Estimator accuracy and interval coverage on synthetic gradients with known G and Σ.
  noisescope bench latency
      Step end → StepStats on stats$, and step end → Recommendation on recommendations$,
      over real gRPC (norms mode), p50/p99.
  noisescope bench dashboard
      Dashboard CPU per frame at 20 updates/s; step latency with and without a dashboard open.
  noisescope bench compute
      Gram and sum-of-squares throughput per compute backend (gpu.js modes, wasm SIMD, JS, reference)
      beside memory bandwidth measured in the same run, and which backend the probe picks.
  noisescope bench ranks [--ranks 256] [--rate 10] [--seconds 30] [--layers 50] [--micro-batches 2]
                       [--workers 4] [--profile DIR] [--json]
      N simulated ranks of one run over real gRPC, from --workers client processes, into a sidecar in its own process (norms mode):
      steps completed, refusals and drops, sidecar CPU and RSS over time, step end → step line p50/p99;
      --profile writes the sidecar's V8 CPU profile into DIR.
  noisescope bench sidecar-cpu [--layers 6,100] [--steps 12000] [--rate 300] [--micro-batches 1] [--profile DIR] [--json]
      The sidecar's CPU µs per measured step (norms mode, one rank's StepBundles over real gRPC into serve --json --no-log).
  noisescope bench wire [--sizes 1,2,4] [--mib 256] [--repeats 5] [--clients python,node] [--json]
      Raw gRPC loopback MB/s into grpc-js for 1–4 MiB messages, 64 KiB vs the sidecar's 16 MiB
      HTTP/2 window, from Python grpcio and Node grpc-js clients; payload → aligned float32 GB/s.
  noisescope bench soak [--minutes 5] [--ranks 16] [--rate 10] [--layers 50] [--workers 2] [--stalled-watchers 1] [--json]
      bench ranks held for minutes with a Watch client that never reads: the sidecar's RSS slope
      after warm-up (MiB/min) and every drop (steps missing, refusals, incomplete, dropped by hooks).
  noisescope bench fuzz [--cases 400] [--seed 1] [--only I] [--json]
      Seeded malformed frames and adversarial messages against a sidecar in its own process: cases
      tried, answered with a gRPC status or Refusal; then a good rank's stats checked exactly.

In Python:  ns = noisescope.watch(model, optimizer)   # one line; see README.md
`;

const SERVE_OPTIONS = {
  host: { type: 'string' },
  port: { type: 'string' },
  json: { type: 'boolean', default: false },
  'no-dashboard': { type: 'boolean', default: false },
  'partial-step-timeout': { type: 'string' },
  ...SIDECAR_FLAGS,
  ...RUN_LOG_FLAGS,
  ...SERVE_SECURITY_FLAGS,
  ...LIMIT_FLAGS,
  help: { type: 'boolean', short: 'h', default: false },
} as const;

async function serve(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: SERVE_OPTIONS, strict: true });
  if (values.help) return void process.stdout.write(USAGE);
  const runLog = runLogFromFlags(values);
  const security = serveSecurityFromFlags(values);
  const sidecar = await startSidecar({
    ...security,
    host: values.host ?? '127.0.0.1',
    port: portOption(values.port, DEFAULT_PORT),
    smoothing: smoothingFromFlags(values),
    policy: policyFromFlags(values),
    limits: limitsFromFlags(values),
    ...backendFromFlags(values),
    ...partialStepTimeoutFromFlags(values['partial-step-timeout']),
    ...(runLog ? { runLog } : {}),
  });
  const write = lineBatch((text) => process.stdout.write(text));
  write(values.json ? JSON.stringify({ type: 'listening', address: sidecar.address }) : `noisescope listening on ${sidecar.address}`);
  if (runLog) write(values.json ? JSON.stringify({ type: 'run-log', path: runLog.dir }) : `noisescope logging runs to ${runLog.dir}`);
  write(computeBackendLine(sidecar, values.json));
  if (security.tls === undefined && !isLoopback(values.host ?? '127.0.0.1')) {
    process.stderr.write('noisescope: tokens and gradients cross the network in plain text: add --tls-cert and --tls-key\n');
  }
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
  ...CLIENT_SECURITY_FLAGS,
  help: { type: 'boolean', short: 'h', default: false },
} as const;

async function dashboard(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: DASHBOARD_OPTIONS, strict: true });
  if (values.help) return void process.stdout.write(USAGE);
  const address = values.address ?? `127.0.0.1:${DEFAULT_PORT}`;
  if (!/^[^\s:]+:\d+$/.test(address)) throw new UsageError(`--address must be host:port, got '${address}'`);
  const security = clientSecurityFromFlags(values);
  if (!process.stdout.isTTY || !process.stdin.isTTY) throw new UsageError('the dashboard needs a terminal (use `serve --json` for scripts)');
  if (inCi()) throw new UsageError('the dashboard draws nothing while the CI variable is set (unset CI, or use `serve --json`)');
  const { watchSidecar } = await import('./remote/watch-client.js');
  const { renderDashboard } = await import('../tui/render-dashboard.js');
  const remote = watchSidecar(address, { ...security, ...(values.run !== undefined ? { run: values.run } : {}) });
  const ink = renderDashboard(remote, { address: `watching ${address}` });
  await Promise.race([ink.waitUntilExit(), untilSignal()]);
  ink.unmount();
  remote.close();
}

const DEMO_OPTIONS = {
  port: { type: 'string' },
  json: { type: 'boolean', default: false },
  'no-dashboard': { type: 'boolean', default: false },
  ...SIDECAR_FLAGS,
  ...RUN_LOG_FLAGS,
  adaptive: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

async function demo(args: string[]): Promise<void> {
  const split = args.indexOf('--');
  const own = split >= 0 ? args.slice(0, split) : args;
  const { values } = parseArgs({ args: own, options: DEMO_OPTIONS, strict: true });
  if (values.help) return void process.stdout.write(USAGE);
  // --adaptive is the Python demo's: it applies each recommendation to its own training.
  const pythonArgs = [...(values.adaptive ? ['--adaptive'] : []), ...(split >= 0 ? args.slice(split + 1) : [])];
  process.exitCode = await runDemo({
    port: portOption(values.port, 0),
    json: values.json,
    dashboard: wantsDashboard(values),
    smoothing: smoothingFromFlags(values),
    policy: policyFromFlags(values),
    ...backendFromFlags(values),
    runLog: runLogFromFlags(values),
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
    const { formatLatency, formatRecommendationLatency, runRecommendationLatency, runStepLatency } = await import('./bench/step-latency.js');
    process.stdout.write(`${formatLatency(await runStepLatency())}\n`);
    process.stdout.write(`${formatRecommendationLatency(await runRecommendationLatency())}\n`);
    return;
  }
  if (which === 'compute') {
    const { runComputeBench } = await import('./compute/bench-compute.js');
    process.stdout.write(`${await runComputeBench()}\n`);
    return;
  }
  if (which === 'dashboard') {
    const { runDashboardBench } = await import('./cli/bench-dashboard.js');
    process.stdout.write(`${await runDashboardBench()}\n`);
    return;
  }
  if (which === 'ranks') {
    const { runRanksLoadCommand } = await import('./bench/ranks-load.js');
    process.stdout.write(`${await runRanksLoadCommand(args.slice(1))}\n`);
    return;
  }
  if (which === 'soak') {
    const { runSoakCommand } = await import('./bench/soak.js');
    process.stdout.write(`${await runSoakCommand(args.slice(1))}\n`);
    return;
  }
  if (which === 'fuzz') {
    const { runFuzzCommand } = await import('./bench/fuzz-command.js');
    process.stdout.write(`${await runFuzzCommand(args.slice(1))}\n`);
    return;
  }
  if (which === 'sidecar-cpu') {
    const { runSidecarCpuCommand } = await import('./cli/bench-sidecar-cpu.js');
    process.stdout.write(`${await runSidecarCpuCommand(args.slice(1))}\n`);
    return;
  }
  if (which === 'wire') {
    const { runWireBenchCommand } = await import('./bench/wire-bench-cli.js');
    process.stdout.write(`${await runWireBenchCommand(args.slice(1))}\n`);
    return;
  }
  throw new UsageError(`unknown benchmark '${which ?? ''}': try 'noisescope bench accuracy', 'latency', 'dashboard', 'ranks', 'sidecar-cpu', 'soak', 'fuzz', 'wire' or 'compute'`);
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
    case 'replay':
      return replay(rest, { wantsDashboard, untilSignal });
    case 'report':
      return report(rest);
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
  // One line to point at the usage, not the usage itself: its 60 lines scrolled the message off a terminal.
  process.stderr.write(`noisescope: ${(error as Error).message ?? String(error)}\n${usage ? '(--help lists every command and flag)\n' : ''}`);
  process.exitCode = usage ? 2 : 1;
});
