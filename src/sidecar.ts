import { filter, interval, map, share, shareReplay, startWith, withLatestFrom, type Observable } from 'rxjs';
import { summarizeSelection } from './compute/backend-summary.js';
import { parseBackendName, type BackendName } from './compute/backends.js';
import { selectBackend, type SelectionReport } from './compute/select-backend.js';
import { Ingest } from './ingest/ingest.js';
import { DEFAULT_BATCH_POLICY, validateBatchPolicy } from './recommend/batch-policy.js';
import { recommendBatchSize } from './recommend/recommend-batch-size.js';
import { resumerFor } from './runlog/run-resumer.js';
import { warnRunLogFailure, writeRunLog, type RunLogOptions } from './runlog/write-run-log.js';
import { estimateNoiseScale } from './stats/estimate-noise-scale.js';
import { DEFAULT_SMOOTHING, type SmoothingOptions } from './stats/run-estimator.js';
import { validateSmoothingOptions } from './stats/smoothing-options.js';
import { Authenticator, type AuthOptions } from './transport/auth.js';
import { bindServer, shutdownServer } from './transport/server.js';
import { serverCredentials, type TlsServerFiles } from './transport/tls.js';
import { WatchService, type WatchStats } from './transport/watch-service.js';
import { resolveLimits, type SidecarLimits } from './transport/limits.js';
import type { BatchPolicy, Health, LayerStats, Recommendation, RunInfo, StepStats } from './types.js';

export interface SidecarOptions extends AuthOptions {
  /** Default 127.0.0.1; any other address needs `token` (or `runTokens`). */
  readonly host?: string;
  /** Default 50051; 0 picks a free port. */
  readonly port?: number;
  readonly smoothing?: Partial<SmoothingOptions>;
  /** The sidecar's recommendation bounds; each run's Hello may override them. */
  readonly policy?: Partial<BatchPolicy>;
  /** How often health$ emits; default 1000 ms. */
  readonly healthIntervalMs?: number;
  /**
   * Append every run to `<dir>/<run>.ndjson` (src/runlog/schema.ts); off when absent.
   * Write errors never throw: each goes to onError (default: a process warning) and stops that run's log.
   */
  readonly runLog?: RunLogOptions;
  /** Force one compute backend (BACKEND_NAMES) instead of the fastest correct one on the start-up probe. */
  readonly backend?: BackendName;
  /** Bytes of dense-shard data the sidecar may hold for steps not yet complete, over all runs; default DENSE_BUDGET_BYTES. */
  readonly denseBudgetBytes?: number;
  /**
   * A step some but not all ranks ended (a rank killed mid-run) is reported partial — a skipped StepStats — and
   * excluded this long after its first rank ended it; counted in health's stepsIncomplete. Default 30 000 ms.
   * A rank whose stream ended without Goodbye and that has not attached again this long is declared gone (said once,
   * in a step note): later steps missing only gone ranks are excluded at once, until a rank rejoins.
   */
  readonly partialStepTimeoutMs?: number;
  /** Resource limits (DEFAULT_LIMITS in src/transport/limits.ts); each error a limit causes names it and this option. */
  readonly limits?: Partial<SidecarLimits>;
  /** Serve TLS with these PEM files (`--tls-cert`, `--tls-key`); `clientCaFile` requires and verifies client certificates. */
  readonly tls?: TlsServerFiles;
}

export interface Sidecar {
  /** host:port the gRPC server listens on. */
  readonly address: string;
  readonly port: number;
  /** One StepStats per measured step of every run. */
  readonly stats$: Observable<StepStats>;
  /** Per-layer smoothed estimates, one per estimated step. */
  readonly layers$: Observable<LayerStats>;
  readonly health$: Observable<Health>;
  /** Every run the sidecar knows, each time one changes. */
  readonly runs$: Observable<readonly RunInfo[]>;
  /** A new Recommendation whenever a run's advice changes (its action or recommended batch). */
  readonly recommendations$: Observable<Recommendation>;
  /** How the compute backend (dense-shard reductions) was chosen: every candidate's probe result. */
  readonly computeBackend: SelectionReport;
  /** The limits in force (the defaults with `options.limits` over them). */
  readonly limits: SidecarLimits;
  /** Watch calls now, the events they hold for clients that are not reading, and those dropped so. */
  watchStats(): WatchStats;
  close(): Promise<void>;
}

export const DEFAULT_PORT = 50051;

/**
 * Starts a sidecar: gRPC in, rxjs out. Data flows one way —
 * transport → ingest → stats → recommend → Observables — and everything else
 * (the CLI, the Watch RPC, the ranks' Attach streams, a dashboard) only subscribes.
 * Bad smoothing or policy options reject here, before anything binds.
 */
export async function startSidecar(options: SidecarOptions = {}): Promise<Sidecar> {
  const smoothing: SmoothingOptions = { ...DEFAULT_SMOOTHING, ...options.smoothing };
  validateSmoothingOptions(smoothing); // bad options fail here, not at the first step
  const policy: BatchPolicy = { ...DEFAULT_BATCH_POLICY, ...options.policy };
  validateBatchPolicy(policy);
  const partial = options.partialStepTimeoutMs;
  if (partial !== undefined && !(partial > 0)) throw new RangeError(`partialStepTimeoutMs must be > 0, got ${partial}`);
  const denseBudget = options.denseBudgetBytes;
  if (denseBudget !== undefined && !(Number.isSafeInteger(denseBudget) && denseBudget >= 1)) {
    throw new RangeError(`denseBudgetBytes must be a whole number of bytes ≥ 1, got ${denseBudget}`);
  }
  const limits = resolveLimits(options.limits);
  // Bad tokens or TLS files reject here too; bindServer refuses a non-loopback host without a token.
  const security = {
    auth: new Authenticator({ ...(options.token !== undefined ? { token: options.token } : {}), ...(options.runTokens ? { runTokens: options.runTokens } : {}) }),
    credentials: serverCredentials(options.tls),
  };
  // Measured at start (DESIGN: on CPU-only machines the fastest path is found, not assumed); a bad name rejects here.
  const force = options.backend === undefined ? undefined : parseBackendName(options.backend);
  const { backend, report: computeBackend } = await selectBackend(force === undefined ? {} : { force });
  const backendSummary = summarizeSelection(computeBackend);
  const ingest = new Ingest({
    backend,
    limits,
    ...(options.denseBudgetBytes !== undefined ? { denseBudgetBytes: options.denseBudgetBytes } : {}),
    ...(options.partialStepTimeoutMs !== undefined ? { partialStepTimeoutMs: options.partialStepTimeoutMs } : {}),
  });

  // A run re-attaching after a restart continues from its log: its smoothing, step count and policy.
  const resumer = resumerFor(options.runLog, smoothing, policy);
  // Hot and replaying the latest value; connected for the sidecar's lifetime.
  const updates$ = ingest.steps$.pipe(estimateNoiseScale(smoothing, resumer ? (run, layers, firstStep) => resumer.estimation(run, layers, firstStep) : undefined), share());
  const stats$ = updates$.pipe(
    map((u) => u.stats),
    shareReplay({ bufferSize: 1, refCount: false }),
  );
  const layers$ = updates$.pipe(
    map((u) => u.layers),
    filter((l): l is LayerStats => l !== null),
    shareReplay({ bufferSize: 1, refCount: false }),
  );
  const runs$ = ingest.runs$.pipe(shareReplay({ bufferSize: 1, refCount: false }));
  // Each step with its run as known at that moment (its batch bounds, optimizer, world size).
  const recommendations$ = stats$.pipe(
    withLatestFrom(runs$),
    map(([stats, runs]) => ({ stats, run: runs.find((r) => r.run === stats.run) })),
    recommendBatchSize(policy, resumer ? (run) => resumer.policy(run) : undefined),
    shareReplay({ bufferSize: 1, refCount: false }),
  );
  // The Watch service subscribes to health$ itself, so its drop count is read through this once it exists.
  let watchDropped = (): number => 0;
  const health$ = interval(options.healthIntervalMs ?? 1000).pipe(
    startWith(0),
    map(
      (): Health => ({
        unixMs: Date.now(),
        ranksConnected: ingest.ranksConnected(),
        messages: ingest.counters.messages,
        bytes: ingest.counters.payloadBytes,
        refused: ingest.counters.refused,
        stepsCompleted: ingest.counters.stepsCompleted,
        stepsIncomplete: ingest.counters.stepsIncomplete,
        droppedByHooks: ingest.counters.droppedByHooks,
        computeBackend: backendSummary,
        ranksGone: ingest.ranksGone(),
        watchEventsDropped: watchDropped(),
      }),
    ),
    shareReplay({ bufferSize: 1, refCount: true }),
  );
  // Keep the pipeline running with no outside subscriber (Watch clients come and go).
  const keepAlive = [stats$.subscribe(), layers$.subscribe(), runs$.subscribe(), recommendations$.subscribe()];
  const runLog = options.runLog ? writeRunLog({ runs$, stats$, layers$, recommendations$ }, { onError: warnRunLogFailure, ...options.runLog }) : null;

  const watch = new WatchService({ runs$, stats$, layers$, health$, recommendations$ }, limits.watchQueueEvents);
  watchDropped = () => watch.stats().dropped;
  let bound;
  try {
    bound = await bindServer(options.host ?? '127.0.0.1', options.port ?? DEFAULT_PORT, ingest, watch, recommendations$, undefined, security, limits);
  } catch (error) {
    watch.close();
    for (const s of keepAlive) s.unsubscribe();
    ingest.close();
    backend.dispose();
    await runLog?.close();
    throw error;
  }
  const { server, address, port, attach } = bound;

  let closing: Promise<void> | null = null;
  return {
    address,
    port,
    stats$,
    layers$,
    health$,
    runs$,
    recommendations$,
    computeBackend,
    limits,
    watchStats: () => watch.stats(),
    close: () =>
      (closing ??= (async () => {
        // End the streams first so Watch calls finish and the server can drain.
        attach.close();
        ingest.close();
        watch.close();
        await shutdownServer(server);
        for (const s of keepAlive) s.unsubscribe();
        backend.dispose(); // after ingest.close(): no reduction is in flight for a closed ingest
        await runLog?.close(); // every queued line written
      })()),
  };
}
