// The dashboard's state, folded from the public Observables by a pure reducer.
import type { Health, LayerStats, RunInfo, StepStats } from '../src/types.js';
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
}

export interface RunView {
  readonly info: RunInfo;
  readonly latest: StepStats | null;
  /** The last HISTORY steps, oldest first. */
  readonly history: readonly ChartPoint[];
  readonly layers: LayerStats | null;
  /** Hook's step end → this dashboard, for the latest step (same-machine clocks); null before one. */
  readonly lagMs: number | null;
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
  | { readonly kind: 'log'; readonly line: string };

/** Steps kept per run: wider than any terminal the chart is drawn on. */
export const HISTORY = 512;

export const EMPTY_MODEL: DashboardModel = { runs: [], health: null, previousHealth: null, connection: null, log: null };

function placeholderRun(run: string, s: StepStats): RunInfo {
  return {
    run,
    worldSize: s.ranks,
    ranksConnected: s.ranks,
    source: s.source,
    mode: 'norms',
    layers: [],
    parameters: 0,
    datasetSize: null,
    every: 1,
    startedUnixMs: s.unixMs,
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
  };
}

function updateRun(model: DashboardModel, run: string, make: () => RunInfo, update: (v: RunView) => RunView): DashboardModel {
  const i = model.runs.findIndex((r) => r.info.run === run);
  if (i < 0) {
    const fresh: RunView = { info: make(), latest: null, history: [], layers: null, lagMs: null };
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
      return updateRun(model, s.run, () => placeholderRun(s.run, s), (v) => {
        // A replayed or repeated step replaces, a restarted run (lower step) starts the chart anew.
        const last = v.history.at(-1);
        const kept = last && s.step <= last.step ? v.history.filter((p) => p.step < s.step) : v.history;
        const history = [...kept.slice(-(HISTORY - 1)), toPoint(s)];
        const lagMs = event.receivedUnixMs === undefined ? v.lagMs : Math.max(0, event.receivedUnixMs - s.unixMs);
        return { ...v, latest: s, history, lagMs };
      });
    }
    case 'layers': {
      const l = event.layers;
      return updateRun(model, l.run, () => placeholderRun(l.run, { ...emptyStep, run: l.run }), (v) => ({ ...v, layers: l }));
    }
    case 'health':
      return { ...model, previousHealth: model.health, health: event.health };
    case 'connection':
      return { ...model, connection: event.connection };
    case 'log':
      return { ...model, log: event.line };
  }
}

const emptyStep: StepStats = {
  run: '',
  step: 0,
  source: 'none',
  globalBatch: 0,
  microBatches: 0,
  ranks: 1,
  levels: 0,
  raw: null,
  smoothed: null,
  lr: null,
  loss: null,
  skipped: false,
  note: null,
  unixMs: 0,
  stepsMeasured: 0,
  temperature: null,
  regimeStartStep: 0,
  temperatureChange: null,
};

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
