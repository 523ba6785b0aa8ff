// `noisescope replay <log>`: a logged run played back through the same Observables the
// live dashboard and `serve`'s lines subscribe to.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { defer, ReplaySubject, type Observable } from 'rxjs';
import { defaultRunLogDir } from '../runlog/default-run-log-dir.js';
import { readRunLog, type RunLog } from '../runlog/read-run-log.js';
import { runLogFileName } from '../runlog/run-log-file-name.js';
import type { RunLogRecord } from '../runlog/schema.js';
import type { Health, LayerStats, Recommendation, RunInfo, StepStats } from '../types.js';
import { UsageError } from './flags.js';
import { formatRecommendation, formatRun, formatStep, ndjson, ndjsonRun } from './format.js';

/** A wait between two records longer than this (the run paused, a sidecar restarted) is cut to it. */
export const MAX_REPLAY_GAP_MS = 1000;

export interface ReplayOptions {
  /** Play at this many times the logged pace (gaps capped at MAX_REPLAY_GAP_MS); null: at once. */
  readonly speed: number | null;
}

export interface ReplayedRun {
  readonly stats$: Observable<StepStats>;
  readonly layers$: Observable<LayerStats>;
  readonly runs$: Observable<readonly RunInfo[]>;
  readonly health$: Observable<Health>;
  readonly recommendations$: Observable<Recommendation>;
  /** Resolves when every record has been played (playback begins at the first subscription). */
  readonly done: Promise<void>;
  /** Stops the playback; idempotent. */
  stop(): void;
}

/** What a log says about itself that a reader should know: torn lines, gaps, steps out of order. */
export function logProblems(log: RunLog): string[] {
  const problems = log.torn.map(
    (t) => `${log.path}:${t.line}: ${t.last ? 'torn last line' : 'torn line'} (${t.bytes} bytes, a write cut short by a crash) skipped`,
  );
  const lastStep = new Map<string, number>();
  for (const record of log.records) {
    if (record.type === 'log-gap') problems.push(`${log.path}: the writer dropped ${record.dropped} lines of run ${record.run} (disk too slow)`);
    if (record.type !== 'step') continue;
    const { run, step } = record.stats;
    const last = lastStep.get(run);
    if (last !== undefined && step <= last) problems.push(`${log.path}: run ${run} step ${step} logged after step ${last}`);
    lastStep.set(run, Math.max(step, last ?? step));
  }
  return problems;
}

/**
 * Plays a run log's records, in order, into hot Observables that replay their
 * latest value (like the sidecar's), from the first subscription on. Health is made up from the steps (the log
 * keeps none): steps completed so far, ranks connected from the run's record.
 */
export function replayRunLog(log: RunLog, options: ReplayOptions): ReplayedRun {
  const speed = options.speed;
  if (speed !== null && !(speed > 0)) throw new RangeError(`speed must be > 0, got ${speed}`);
  const stats = new ReplaySubject<StepStats>(1);
  const layers = new ReplaySubject<LayerStats>(1);
  const runs = new ReplaySubject<readonly RunInfo[]>(1);
  const health = new ReplaySubject<Health>(1);
  const recommendations = new ReplaySubject<Recommendation>(1);
  const known = new Map<string, RunInfo>();
  let stepsCompleted = 0;
  let stopped = false;
  let wake: (() => void) | null = null;
  let timer: NodeJS.Timeout | null = null;

  const play = (record: RunLogRecord) => {
    switch (record.type) {
      case 'run':
      case 'run-ended':
        known.set(record.info.run, record.info);
        runs.next([...known.values()]);
        return;
      case 'step': {
        stats.next(record.stats);
        stepsCompleted++;
        const info = known.get(record.stats.run);
        health.next({
          unixMs: record.stats.unixMs,
          ranksConnected: info && !info.ended ? info.ranksConnected : 0,
          messages: 0,
          bytes: 0,
          refused: 0,
          stepsCompleted,
          stepsIncomplete: 0,
          droppedByHooks: 0,
          computeBackend: `replay of ${log.path}`,
          ranksGone: 0,
          watchEventsDropped: 0,
        });
        return;
      }
      case 'layers':
        return layers.next(record.layers);
      case 'recommendation':
        return recommendations.next(record.recommendation);
      case 'log-gap':
        return;
    }
  };
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      wake = resolve;
      timer = setTimeout(resolve, ms);
    });

  const playAll = async () => {
    let previous: number | null = null;
    for (const [i, record] of log.records.entries()) {
      if (stopped) break;
      if (speed !== null && previous !== null) {
        const gap = Math.min(Math.max(0, record.unixMs - previous) / speed, MAX_REPLAY_GAP_MS);
        if (gap >= 1) await sleep(gap);
      } else if (speed === null && i % 1000 === 999) {
        await new Promise<void>((resolve) => setImmediate(resolve)); // let a subscriber's output drain
      }
      if (stopped) break;
      previous = record.unixMs;
      play(record);
    }
    for (const subject of [stats, layers, runs, health, recommendations]) subject.complete();
  };
  // Playback begins once someone listens (after the subscriptions made in the same turn), so no step is missed.
  let begin: () => void = () => {};
  const done = new Promise<void>((resolve) => {
    begin = () => {
      begin = () => {};
      setImmediate(() => void playAll().then(resolve));
    };
  });
  const listened = <T>(subject: ReplaySubject<T>): Observable<T> =>
    defer(() => {
      begin();
      return subject;
    });

  return {
    stats$: listened(stats),
    layers$: listened(layers),
    runs$: listened(runs),
    health$: listened(health),
    recommendations$: listened(recommendations),
    done,
    stop: () => {
      stopped = true;
      if (timer) clearTimeout(timer);
      wake?.();
    },
  };
}

const REPLAY_OPTIONS = {
  json: { type: 'boolean', default: false },
  'no-dashboard': { type: 'boolean', default: false },
  speed: { type: 'string' },
  'log-dir': { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

export const REPLAY_USAGE = `  noisescope replay <log.ndjson | run name> [--log-dir DIR] [--json] [--no-dashboard] [--speed X]
      Play a logged run back (a run name is looked up in the log directory, as serve names its files):
      into the dashboard in a terminal (q quits), otherwise one line
      per step and recommendation (NDJSON with --json, as serve --json prints them).
      --speed X plays at X times the logged pace, waits capped at ${MAX_REPLAY_GAP_MS / 1000} s (default: 1 in the
      dashboard, at once for lines). Torn lines and log gaps are reported on stderr, never fatal.`;

/** What the CLI shares with serve: whether a dashboard can be drawn here, and the wait for a signal. */
export interface ReplayContext {
  readonly wantsDashboard: (values: { json: boolean; 'no-dashboard': boolean }) => boolean;
  readonly untilSignal: () => Promise<void>;
}

export async function replay(args: string[], context: ReplayContext): Promise<void> {
  const { values, positionals } = parseArgs({ args, options: REPLAY_OPTIONS, strict: true, allowPositionals: true });
  if (values.help) return void process.stdout.write(`${REPLAY_USAGE}\n`);
  if (positionals.length !== 1) throw new UsageError(`replay takes one run log file, got ${positionals.length === 0 ? 'none' : positionals.map((p) => `'${p}'`).join(' ')}`);
  const speed = speedOption(values.speed);
  const log = await readRunLog(logPath(positionals[0]!, values['log-dir']));
  for (const problem of logProblems(log)) process.stderr.write(`noisescope: ${problem}\n`);
  if (log.records.length === 0) process.stderr.write(`noisescope: ${log.path} holds no records\n`);

  if (context.wantsDashboard(values)) {
    const played = replayRunLog(log, { speed: speed ?? 1 });
    const { renderDashboard } = await import('../../tui/render-dashboard.js');
    const ink = renderDashboard(played, { address: `replaying ${log.path}`, replaySpeed: speed ?? 1 });
    await Promise.race([ink.waitUntilExit(), context.untilSignal()]);
    played.stop();
    ink.unmount();
    return;
  }
  const played = replayRunLog(log, { speed });
  const write = (line: string) => process.stdout.write(`${line}\n`);
  const shown = new Map<string, string>();
  const subscriptions = values.json
    ? [
        played.runs$.subscribe((runs) => runs.forEach((r) => showRun(r, ndjsonRun))),
        played.stats$.subscribe((s) => write(ndjson('step', s))),
        played.layers$.subscribe((l) => write(ndjson('layers', l))),
        played.recommendations$.subscribe((r) => write(ndjson('recommendation', r))),
      ]
    : [
        played.runs$.subscribe((runs) => runs.forEach((r) => showRun(r, formatRun))),
        played.stats$.subscribe((s) => write(formatStep(s))),
        played.recommendations$.subscribe((r) => write(formatRecommendation(r))),
      ];
  // runs$ carries every run each time one changes: print a run only when it reads differently.
  function showRun(run: RunInfo, format: (run: RunInfo) => string): void {
    const line = format(run);
    if (shown.get(run.run) === line) return;
    shown.set(run.run, line);
    write(line);
  }
  await Promise.race([played.done, context.untilSignal()]);
  played.stop();
  for (const s of subscriptions) s.unsubscribe();
}

/** A file as given; else a run's log in the log directory (--log-dir, else serve's default). */
function logPath(given: string, dir: string | undefined): string {
  if (existsSync(given)) return given;
  let byName: string;
  try {
    byName = join(resolve(dir ?? defaultRunLogDir()), runLogFileName(given));
  } catch {
    return given; // not a run name either: the read names the missing file
  }
  if (existsSync(byName)) return byName;
  throw new UsageError(`no run log '${given}': neither a file nor a run logged in ${dirname(byName)}`);
}

function speedOption(value: string | undefined): number | null {
  if (value === undefined) return null;
  const speed = Number(value);
  if (!(Number.isFinite(speed) && speed > 0)) throw new UsageError(`--speed must be a number > 0 (times the logged pace), got '${value}'`);
  return speed;
}
