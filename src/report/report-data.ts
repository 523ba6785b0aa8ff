// One run's records out of a run log, in step order, ready to be drawn or tabulated.
import { NoiseScopeError } from '../errors.js';
import type { RunLog } from '../runlog/read-run-log.js';
import type { LayerStats, Recommendation, RunInfo, StepStats } from '../types.js';

export interface ReportRun {
  readonly run: string;
  /** The run as last logged (its run-ended record when it ended); null when the log kept none. */
  readonly info: RunInfo | null;
  /** Ascending by step, one per step: a step logged twice (a resumed run) keeps its last record. */
  readonly steps: readonly StepStats[];
  readonly recommendations: readonly Recommendation[];
  readonly layers: readonly LayerStats[];
}

/** The runs a log holds, in order of first appearance. */
export function runsInLog(log: RunLog): string[] {
  const runs = new Set<string>();
  for (const r of log.records) runs.add(r.type === 'log-gap' ? r.run : r.type === 'step' ? r.stats.run : r.type === 'layers' ? r.layers.run : r.type === 'recommendation' ? r.recommendation.run : r.info.run);
  return [...runs];
}

/**
 * The run to report: `run` if given, else the log's only run. An empty log, an
 * unknown run, several runs without a choice, or a run with no measured step is
 * a clear error: there would be nothing (or the wrong thing) to draw.
 */
export function reportRun(log: RunLog, run?: string): ReportRun {
  const runs = runsInLog(log);
  if (runs.length === 0 && log.torn.length > 0) {
    throw new NoiseScopeError('invalid-message', `${log.path} is not a run log: none of its ${log.torn.length} line${log.torn.length === 1 ? ' is a' : 's is a'} JSON record`);
  }
  if (runs.length === 0) throw new NoiseScopeError('invalid-message', `${log.path} is empty: no run log records to report`);
  if (run !== undefined && !runs.includes(run)) throw new NoiseScopeError('unknown-run', `${log.path} has no run '${run}' (it holds ${runs.map((r) => `'${r}'`).join(', ')})`);
  if (run === undefined && runs.length > 1) throw new NoiseScopeError('invalid-message', `${log.path} holds ${runs.length} runs (${runs.map((r) => `'${r}'`).join(', ')}): choose one with --run`);
  const name = run ?? runs[0]!;
  let info: RunInfo | null = null;
  const steps = new Map<number, StepStats>();
  const recommendations: Recommendation[] = [];
  const layers = new Map<number, LayerStats>();
  for (const r of log.records) {
    if ((r.type === 'run' || r.type === 'run-ended') && r.info.run === name) info = r.info;
    else if (r.type === 'step' && r.stats.run === name) steps.set(r.stats.step, r.stats);
    else if (r.type === 'recommendation' && r.recommendation.run === name) recommendations.push(r.recommendation);
    else if (r.type === 'layers' && r.layers.run === name) layers.set(r.layers.step, r.layers);
  }
  if (steps.size === 0) throw new NoiseScopeError('invalid-message', `${log.path}: run '${name}' has no measured step yet: nothing to plot`);
  const byStep = <T extends { step: number }>(values: Iterable<T>) => [...values].sort((a, b) => a.step - b.step);
  return { run: name, info, steps: byStep(steps.values()), recommendations: byStep(recommendations), layers: byStep(layers.values()) };
}
