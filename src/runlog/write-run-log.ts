import { join } from 'node:path';
import { Subject, type Observable, type Observer, type Subscription } from 'rxjs';
import type { LayerStats, Recommendation, RunInfo, StepStats } from '../types.js';
import type { RunResumeReport } from './run-resumer.js';
import { RunLogFile, type LogBuffer, type LogCounters } from './run-log-file.js';
import { runLogFileName } from './run-log-file-name.js';
import { RUN_LOG_SCHEMA_VERSION, type RunLogRecord } from './schema.js';

/** The sidecar's public Observables the log is written from (it only subscribes). */
export interface RunLogSources {
  readonly runs$: Observable<readonly RunInfo[]>;
  readonly stats$: Observable<StepStats>;
  readonly layers$?: Observable<LayerStats>;
  readonly recommendations$?: Observable<Recommendation>;
}

export interface RunLogOptions {
  /** Created if missing. */
  readonly dir: string;
  /** Bytes queued for the disk over all runs before lines are dropped (and counted); default 8 MiB. */
  readonly maxBufferedBytes?: number;
  /** One per-layer record every this many steps of a run (its first estimated step included); 0 = none; default 10. */
  readonly layersEvery?: number;
  /** Called with each failure as well as errors$ emitting it (the sidecar warns by default). */
  readonly onError?: (failure: RunLogFailure) => void;
  /**
   * A run re-attaching to a restarted sidecar whose log has no run-ended record since its last step
   * resumes from that log (src/runlog/resume-run.ts); default true. Called once per resumed run.
   */
  readonly resume?: boolean;
  readonly onResume?: (report: RunResumeReport) => void;
}

/** A run's log stopped: it could not be written. Reported once per run. */
export interface RunLogFailure {
  /** null when a source Observable itself failed (nothing more is logged then). */
  readonly run: string | null;
  readonly path: string;
  /** The file system's code (ENOSPC, EACCES, …) when it gave one. */
  readonly code: string | null;
  readonly message: string;
}

export interface RunLogWriter {
  readonly dir: string;
  /** Where a run's records go. */
  pathFor(run: string): string;
  readonly errors$: Observable<RunLogFailure>;
  /** Lines written and dropped so far, over all runs. */
  readonly counters: Readonly<LogCounters>;
  /** Stops listening, writes everything queued (and any pending log-gap), closes the files; idempotent. */
  close(): Promise<void>;
}

export const DEFAULT_MAX_BUFFERED_BYTES = 8 << 20;
export const DEFAULT_LAYERS_EVERY = 10;

/** Appends every run seen on `sources` to `<dir>/<runLogFileName(run)>` (see schema.ts). */
export function writeRunLog(sources: RunLogSources, options: RunLogOptions): RunLogWriter {
  const maxBufferedBytes = options.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED_BYTES;
  const layersEvery = options.layersEvery ?? DEFAULT_LAYERS_EVERY;
  if (typeof options.dir !== 'string' || options.dir === '') throw new RangeError(`runLog.dir must be a directory path, got ${JSON.stringify(options.dir)}`);
  if (!(Number.isInteger(maxBufferedBytes) && maxBufferedBytes > 0)) throw new RangeError(`runLog maxBufferedBytes must be an integer > 0, got ${String(maxBufferedBytes)}`);
  if (!(Number.isInteger(layersEvery) && layersEvery >= 0)) throw new RangeError(`runLog layersEvery must be an integer ≥ 0, got ${String(layersEvery)}`);

  const errors = new Subject<RunLogFailure>();
  const onError = options.onError;
  if (onError) {
    errors.subscribe((failure) => {
      try {
        onError(failure);
      } catch {
        // A throwing callback must not turn a lost log into a crashed sidecar.
      }
    });
  }
  const buffer: LogBuffer = { queued: 0, max: maxBufferedBytes };
  const counters: LogCounters = { written: 0, dropped: 0 };
  const files = new Map<string, RunLogFile>();
  const pathFor = (run: string) => join(options.dir, runLogFileName(run));

  const fileFor = (run: string): RunLogFile => {
    let file = files.get(run);
    if (!file) {
      const path = pathFor(run);
      file = new RunLogFile(run, path, buffer, counters, (error) => errors.next(failure(run, path, error)));
      files.set(run, file);
    }
    return file;
  };
  const base = () => ({ v: RUN_LOG_SCHEMA_VERSION, unixMs: Date.now() }) as const;
  const append = (run: string, record: RunLogRecord) => fileFor(run).append(record);

  // A run is logged when first seen and whenever its RunInfo changes.
  const lastInfo = new Map<string, { json: string; ended: boolean }>();
  const onRuns = (runs: readonly RunInfo[]) => {
    for (const info of runs) {
      const json = JSON.stringify(info);
      const last = lastInfo.get(info.run);
      if (last?.json === json) continue;
      lastInfo.set(info.run, { json, ended: info.ended });
      if (info.ended && !last?.ended) {
        writeAdvice(info.run);
        append(info.run, { ...base(), type: 'run-ended', info });
        void fileFor(info.run).release(); // an ended run holds no file open; a late record reopens it
      } else {
        append(info.run, { ...base(), type: 'run', info });
      }
    }
  };

  // recommendations$ is computed from stats$, so a recommendation can reach the writer
  // before the step it was made at: it waits for that step's record (or a microtask).
  const pendingAdvice = new Map<string, Recommendation[]>();
  const writeAdvice = (run: string) => {
    const pending = pendingAdvice.get(run);
    if (!pending) return;
    pendingAdvice.delete(run);
    for (const recommendation of pending) append(run, { ...base(), type: 'recommendation', recommendation });
  };
  const onRecommendation = (recommendation: Recommendation) => {
    const pending = pendingAdvice.get(recommendation.run);
    if (pending) return void pending.push(recommendation);
    pendingAdvice.set(recommendation.run, [recommendation]);
    queueMicrotask(() => writeAdvice(recommendation.run));
  };
  const onStats = (stats: StepStats) => {
    append(stats.run, { ...base(), type: 'step', stats });
    writeAdvice(stats.run);
  };

  const layersLoggedAt = new Map<string, number>();
  const onLayers = (layers: LayerStats) => {
    if (layersEvery === 0) return;
    const last = layersLoggedAt.get(layers.run);
    if (last !== undefined && layers.step >= last && layers.step < last + layersEvery) return;
    layersLoggedAt.set(layers.run, layers.step);
    append(layers.run, { ...base(), type: 'layers', layers });
  };

  // A failing source ends only its own subscription; the others keep logging.
  const observer = <T>(next: (value: T) => void): Partial<Observer<T>> => ({
    next,
    error: (error: unknown) => errors.next(failure(null, options.dir, error)),
  });
  const subscriptions: Subscription[] = [
    sources.runs$.subscribe(observer(onRuns)),
    sources.stats$.subscribe(observer(onStats)),
  ];
  if (sources.layers$) subscriptions.push(sources.layers$.subscribe(observer(onLayers)));
  if (sources.recommendations$) subscriptions.push(sources.recommendations$.subscribe(observer(onRecommendation)));

  let closing: Promise<void> | null = null;
  return {
    dir: options.dir,
    pathFor,
    errors$: errors.asObservable(),
    counters,
    close: () =>
      (closing ??= (async () => {
        for (const s of subscriptions) s.unsubscribe();
        for (const run of [...pendingAdvice.keys()]) writeAdvice(run);
        await Promise.all([...files.values()].map((f) => f.release()));
        errors.complete();
      })()),
  };
}

function failure(run: string | null, path: string, error: unknown): RunLogFailure {
  const code = (error as { code?: unknown } | null)?.code;
  const message = error instanceof Error ? error.message : String(error);
  return {
    run,
    path,
    code: typeof code === 'string' ? code : null,
    message: run === null ? `run log stopped: a source failed: ${message}` : `run log for '${run}' stopped: ${message}`,
  };
}

/** The sidecar's default: one process warning per failure (Node prints it on stderr), never a throw. */
export function warnRunLogFailure(failure: RunLogFailure): void {
  process.emitWarning(`${failure.message} (${failure.path})`, { code: 'NOISESCOPE_RUN_LOG' });
}
