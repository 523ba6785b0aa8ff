// The dashboard's state, folded from the public Observables by a pure reducer.
import type { Health, LayerStats, Recommendation, RunInfo, StepStats, TemperatureChange } from '../src/types.js';
import type { ConnectionState } from './sources.js';

/** One step on the chart. */
export interface ChartPoint {
  readonly step: number;
  readonly bSimple: number | null;
  readonly low: number | null;
  readonly high: number | null;
  readonly trusted: boolean;
  readonly globalBatch: number;
  readonly unixMs: number;
  /** The smoothing restarted here (the temperature lr/B changed). */
  readonly temperatureChange: boolean;
}

/** A step where the temperature change restarted the smoothing. */
export interface SmoothingRestart {
  readonly step: number;
  /** StepStats.stepsMeasured at that step: how long ago it was, in measured steps. */
  readonly stepsMeasured: number;
  readonly change: TemperatureChange;
}

/** The global batch moved between two measured steps (an adaptive run). */
export interface BatchChange {
  readonly step: number;
  readonly from: number;
  readonly to: number;
}

export interface RunView {
  readonly info: RunInfo;
  readonly latest: StepStats | null;
  /** The last HISTORY steps, oldest first. */
  readonly history: readonly ChartPoint[];
  readonly layers: LayerStats | null;
  /** Hook's step end → this dashboard, for the latest step (same-machine clocks); null before one. */
  readonly lagMs: number | null;
  /** The latest advice; null before the policy's first. */
  readonly recommendation: Recommendation | null;
  /** The last KEPT advices (each a change of action or batch), oldest first; ends with `recommendation`. */
  readonly recommendations: readonly Recommendation[];
  /** The last KEPT batch changes seen in the steps, oldest first. */
  readonly batchChanges: readonly BatchChange[];
  /** The latest smoothing restart; null if none in this run. */
  readonly restart: SmoothingRestart | null;
}

export interface DashboardModel {
  /** Runs in the order they appeared. */
  readonly runs: readonly RunView[];
  readonly health: Health | null;
  readonly previousHealth: Health | null;
  readonly connection: ConnectionState | null;
  readonly log: string | null;
}

export type DashboardEvent =
  | { readonly kind: 'runs'; readonly runs: readonly RunInfo[] }
  | { readonly kind: 'step'; readonly stats: StepStats; readonly receivedUnixMs?: number }
  | { readonly kind: 'layers'; readonly layers: LayerStats }
  | { readonly kind: 'health'; readonly health: Health }
  | { readonly kind: 'connection'; readonly connection: ConnectionState }
  | { readonly kind: 'log'; readonly line: string }
  | { readonly kind: 'recommendation'; readonly recommendation: Recommendation };

/** Steps kept per run: wider than any terminal the chart is drawn on. */
export const HISTORY = 512;
/** Advices and batch changes kept per run: a line's worth. */
export const KEPT = 8;

export const EMPTY_MODEL: DashboardModel = { runs: [], health: null, previousHealth: null, connection: null, log: null };

/** A run seen in a step or advice before runs$ described it. */
function placeholderRun(run: string, worldSize: number, source: StepStats['source'], unixMs: number): RunInfo {
  return {
    run,
    worldSize,
    ranksConnected: worldSize,
    source,
    mode: 'norms',
    layers: [],
    parameters: 0,
    uncoveredLayers: [],
    datasetSize: null,
    every: 1,
    startedUnixMs: unixMs,
    ended: false,
    optimizer: null,
    policy: {},
  };
}

function toPoint(s: StepStats): ChartPoint {
  const e = s.smoothed;
  return {
    step: s.step,
    bSimple: e?.bSimple ?? null,
    low: e?.interval?.low ?? null,
    high: e?.interval?.high ?? null,
    trusted: e?.trusted ?? false,
    globalBatch: s.globalBatch,
    unixMs: s.unixMs,
    temperatureChange: s.temperatureChange !== null,
  };
}

function updateRun(model: DashboardModel, run: string, make: () => RunInfo, update: (v: RunView) => RunView): DashboardModel {
  const i = model.runs.findIndex((r) => r.info.run === run);
  if (i < 0) {
    const fresh: RunView = {
      info: make(),
      latest: null,
      history: [],
      layers: null,
      lagMs: null,
      recommendation: null,
      recommendations: [],
      batchChanges: [],
      restart: null,
    };
    return { ...model, runs: [...model.runs, update(fresh)] };
  }
  const runs = model.runs.slice();
  runs[i] = update(runs[i]!);
  return { ...model, runs };
}

export function reduce(model: DashboardModel, event: DashboardEvent): DashboardModel {
  switch (event.kind) {
    case 'runs': {
      let next = model;
      for (const info of event.runs) next = updateRun(next, info.run, () => info, (v) => ({ ...v, info }));
      return next;
    }
    case 'step': {
      const s = event.stats;
      return updateRun(model, s.run, () => placeholderRun(s.run, s.ranks, s.source, s.unixMs), (v) => {
        // A replayed or repeated step replaces, a restarted run (lower step) starts the chart anew.
        const last = v.history.at(-1);
        const rewound = last !== undefined && s.step <= last.step;
        const kept = rewound ? v.history.filter((p) => p.step < s.step) : v.history;
        const history = [...kept.slice(-(HISTORY - 1)), toPoint(s)];
        const lagMs = event.receivedUnixMs === undefined ? v.lagMs : Math.max(0, event.receivedUnixMs - s.unixMs);
        const before = kept.at(-1);
        let batchChanges = rewound ? v.batchChanges.filter((c) => c.step < s.step) : v.batchChanges;
        if (before && before.globalBatch > 0 && s.globalBatch > 0 && before.globalBatch !== s.globalBatch) {
          batchChanges = [...batchChanges.slice(-(KEPT - 1)), { step: s.step, from: before.globalBatch, to: s.globalBatch }];
        }
        let restart = v.restart && rewound && v.restart.step >= s.step ? null : v.restart;
        if (s.temperatureChange) restart = { step: s.step, stepsMeasured: s.stepsMeasured, change: s.temperatureChange };
        return { ...v, latest: s, history, lagMs, batchChanges, restart };
      });
    }
    case 'layers': {
      const l = event.layers;
      return updateRun(model, l.run, () => placeholderRun(l.run, 1, 'none', 0), (v) => ({ ...v, layers: l }));
    }
    case 'recommendation': {
      const r = event.recommendation;
      return updateRun(model, r.run, () => placeholderRun(r.run, r.worldSize, 'none', r.unixMs), (v) => {
        // The same advice again (a replay on reconnect) replaces; a lower sequence is a restarted run.
        const last = v.recommendation;
        const kept = last && r.sequence <= last.sequence ? v.recommendations.filter((x) => x.sequence < r.sequence) : v.recommendations;
        return { ...v, recommendation: r, recommendations: [...kept.slice(-(KEPT - 1)), r] };
      });
    }
    case 'health':
      return { ...model, previousHealth: model.health, health: event.health };
    case 'connection':
      return { ...model, connection: event.connection };
    case 'log':
      return { ...model, log: event.line };
  }
}

/** Examples per second over the last steps of the history (null with fewer than two). */
export function examplesPerSecond(history: readonly ChartPoint[], window = 20): number | null {
  const recent = history.slice(-window);
  const first = recent[0];
  const last = recent.at(-1);
  if (!first || !last || recent.length < 2 || last.unixMs <= first.unixMs) return null;
  // Steps between measured ones (every > 1) trained on a batch too.
  let examples = 0;
  for (let i = 1; i < recent.length; i++) examples += (recent[i]!.step - recent[i - 1]!.step) * recent[i]!.globalBatch;
  return (examples * 1000) / (last.unixMs - first.unixMs);
}

/** Measured steps a restart stays announced after it happened. */
export const RESTART_NOTICE_STEPS = 50;

/** The run's latest smoothing restart while it is recent enough to announce; null otherwise. */
export function recentRestart(view: RunView | null, within = RESTART_NOTICE_STEPS): SmoothingRestart | null {
  const restart = view?.restart;
  const latest = view?.latest;
  if (!restart || !latest) return null;
  return latest.stepsMeasured - restart.stepsMeasured < within ? restart : null;
}
