import { closeSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import type { RunPolicy } from '../recommend/run-policy.js';
import type { ResumedEstimation } from '../stats/estimate-noise-scale.js';
import type { SmoothingOptions } from '../stats/smoothing-options.js';
import type { BatchPolicy, LayerInfo } from '../types.js';
import { parseRunLogLine } from './read-run-log.js';
import { RunLogReplay, type ResumedRun } from './resume-run.js';
import { runLogFileName } from './run-log-file-name.js';
import { warnRunLogFailure, type RunLogOptions } from './write-run-log.js';

/** Said once per resumed run (the CLI prints it). */
export interface RunResumeReport {
  readonly run: string;
  readonly path: string;
  readonly lastStep: number;
  readonly stepsMeasured: number;
  /** Lines of the log that were skipped as torn writes. */
  readonly tornLines: number;
  /** "resumed run X from <log> at step N". */
  readonly message: string;
}

/**
 * A restarted sidecar's memory of unfinished runs: the first time a run's
 * step arrives, its log (if any) is read once and the run's estimation and
 * policy state rebuilt from it. A log that cannot be read or parsed starts
 * the run afresh and is reported; it never stops the run.
 */
export class RunResumer {
  private readonly loaded = new Map<string, (ResumedRun & { readonly tornLines: number }) | null>();

  constructor(
    private readonly pathFor: (run: string) => string,
    private readonly smoothing: SmoothingOptions,
    private readonly policyDefaults: BatchPolicy,
    private readonly onResume: (report: RunResumeReport) => void = () => {},
    private readonly onError: (run: string, path: string, error: unknown) => void = () => {},
  ) {}

  /**
   * Said (onResume) when the run resumes. A run whose first step is not after the log's last one is
   * a new training under the same name, and a logged run with other layers another model: each
   * starts afresh, reported.
   */
  estimation(run: string, layers: readonly LayerInfo[], firstStep: number): ResumedEstimation | null {
    const resumed = this.load(run);
    if (!resumed) return null;
    const estimation = firstStep > resumed.lastStep ? resumed.estimation(layers) : null;
    if (!estimation) {
      this.loaded.set(run, null);
      const why =
        firstStep <= resumed.lastStep
          ? `it starts again at step ${firstStep}, and its log, which never saw it end, reached step ${resumed.lastStep}: a new training under the same name`
          : "its layers differ from the logged run's";
      this.fail(run, resumed.path, new Error(why));
      return null;
    }
    const { lastStep, stepsMeasured, tornLines } = resumed;
    const message = `${resumed.message} (${stepsMeasured} steps measured${tornLines > 0 ? `; ${tornLines} torn line${tornLines > 1 ? 's' : ''} skipped` : ''})`;
    try {
      this.onResume({ run, path: resumed.path, lastStep, stepsMeasured, tornLines, message });
    } catch {
      // A throwing callback must not stop the run.
    }
    return estimation;
  }

  /** The last lookup for a run (the policy comes after its first step's estimate): the run is forgotten here, holding no memory. */
  policy(run: string): RunPolicy | null {
    const policy = this.load(run)?.policy ?? null;
    this.loaded.delete(run);
    return policy;
  }

  // Synchronous, once per run, at its first step: the step waits for its own history (`node dist/src/runlog/bench-run-log.js` times it).
  private load(run: string): (ResumedRun & { readonly tornLines: number }) | null {
    if (this.loaded.has(run)) return this.loaded.get(run) ?? null;
    let resumed: (ResumedRun & { readonly tornLines: number }) | null = null;
    let path = '';
    try {
      path = this.pathFor(run);
      const replay = new RunLogReplay(this.smoothing, this.policyDefaults);
      let torn = 0;
      const found = forEachLine(path, (line, number) => {
        const record = parseRunLogLine(line, `${path}:${number}`);
        if (record) replay.add(record);
        else torn++;
      })
        ? replay.resumed(path)
        : null;
      if (found && found.run !== run) throw new Error(`the log holds run '${found.run}', not '${run}'`);
      resumed = found && Object.assign(found, { tornLines: torn });
    } catch (error) {
      resumed = null;
      this.fail(run, path, error);
    }
    this.loaded.set(run, resumed);
    return resumed;
  }

  private fail(run: string, path: string, error: unknown): void {
    try {
      this.onError(run, path, error);
    } catch {
      // A throwing callback must not stop the run.
    }
  }
}

const CHUNK_BYTES = 1 << 20;

/**
 * Calls `onLine` with each line of the file (1-based numbers), read in chunks so a log of
 * any size is replayed without holding it whole; false when there is no such file.
 */
function forEachLine(path: string, onLine: (line: string, number: number) => void): boolean {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (error) {
    if ((error as { code?: unknown }).code === 'ENOENT') return false;
    throw error;
  }
  try {
    const chunk = Buffer.allocUnsafe(CHUNK_BYTES);
    const decoder = new StringDecoder('utf8'); // a character split across two chunks stays whole
    let pending = '';
    let number = 0;
    for (let read = readSync(fd, chunk); read > 0; read = readSync(fd, chunk)) {
      const lines = (pending + decoder.write(chunk.subarray(0, read))).split('\n');
      pending = lines.pop()!;
      for (const line of lines) onLine(line, ++number);
    }
    pending += decoder.end();
    if (pending !== '') onLine(pending, ++number);
    return true;
  } finally {
    closeSync(fd);
  }
}

/** The sidecar's resumer for its run-log options (null when it does not log, or `resume: false`). */
export function resumerFor(runLog: RunLogOptions | undefined, smoothing: SmoothingOptions, policyDefaults: BatchPolicy): RunResumer | null {
  if (!runLog || runLog.resume === false) return null;
  const onError = runLog.onError ?? warnRunLogFailure;
  return new RunResumer(
    (run) => join(runLog.dir, runLogFileName(run)),
    smoothing,
    policyDefaults,
    runLog.onResume,
    (run, path, error) =>
      onError({ run, path, code: null, message: `not resuming run '${run}' from its log (estimating it afresh): ${error instanceof Error ? error.message : String(error)}` }),
  );
}
