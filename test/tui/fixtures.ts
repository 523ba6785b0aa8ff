// Scripted values for the dashboard tests, shaped like the sidecar's.
import { BehaviorSubject, ReplaySubject, Subject } from 'rxjs';
import type { Estimate, Health, LayerStats, Recommendation, RunInfo, StepStats } from '../../src/types.js';
import type { DashboardSources } from '../../tui/sources.js';

export function runInfo(overrides: Partial<RunInfo> = {}): RunInfo {
  return {
    run: 'mlp',
    worldSize: 1,
    ranksConnected: 1,
    source: 'accumulation',
    mode: 'norms',
    layers: [],
    uncoveredLayers: [],
    parameters: 26122,
    datasetSize: 1797,
    every: 1,
    startedUnixMs: Date.now() - 10_000,
    ended: false,
    optimizer: 'SGD',
    policy: {},
    ...overrides,
  };
}

export function estimate(bSimple: number | null, overrides: Partial<Estimate> = {}): Estimate {
  return {
    gradSqNorm: 0.125,
    traceSigma: bSimple === null ? 1 : bSimple * 0.125,
    bSimple,
    interval: bSimple === null ? null : { low: bSimple * 0.8, high: bSimple * 1.3 },
    trusted: true,
    ...overrides,
  };
}

export function step(n: number, overrides: Partial<StepStats> = {}): StepStats {
  return {
    run: 'mlp',
    step: n,
    source: 'accumulation',
    globalBatch: 64,
    microBatches: 4,
    ranks: 1,
    levels: 2,
    raw: estimate(200),
    smoothed: estimate(123),
    lr: 0.1,
    loss: 0.5,
    skipped: false,
    note: null,
    unixMs: 1_000_000 + n * 100,
    stepsMeasured: n + 1,
    temperature: 0.1 / 64,
    regimeStartStep: 0,
    temperatureChange: null,
    ...overrides,
  };
}

/** An increase from 64 to 128 (32 per micro-batch × 4 accumulation steps × 1 rank), as the policy words it. */
export function recommendation(overrides: Partial<Recommendation> = {}): Recommendation {
  return {
    run: 'mlp',
    step: 100,
    sequence: 2,
    action: 'increase',
    currentGlobalBatch: 64,
    recommendedGlobalBatch: 128,
    microBatch: 32,
    accumulationSteps: 4,
    worldSize: 1,
    noiseScale: 150,
    interval: { low: 120, high: 190 },
    targetBatch: 150,
    objective: 'balanced',
    stepsFactor: 0.68,
    examplesFactor: 1.17,
    lrHint: { currentLr: 0.05, suggestedLr: 0.0707, rule: 'sqrt', note: 'A heuristic: scale the learning rate with the square root of the batch (Adam-type optimizer).' },
    confidence: 0.93,
    reason: 'B_noise 150 [120, 190] has stayed above the batch 64 for 10 measured steps.',
    unixMs: 1_010_000,
    ...overrides,
  };
}

export function health(overrides: Partial<Health> = {}): Health {
  return {
    unixMs: 1_010_000,
    ranksConnected: 1,
    messages: 500,
    bytes: 120_000,
    refused: 0,
    stepsCompleted: 99,
    stepsIncomplete: 0,
    droppedByHooks: 0,
    computeBackend: 'cpu (norms mode)',
    ranksGone: 0,
    watchEventsDropped: 0,
    ...overrides,
  };
}

export function layerStats(count: number, run = 'mlp', at = 99): LayerStats {
  return {
    run,
    step: at,
    layers: Array.from({ length: count }, (_, i) => ({
      name: `layer${String(i).padStart(2, '0')}.weight`,
      numel: 1000 + i,
      gradSqNorm: 0.01 * (i + 1),
      traceSigma: 1 + ((i * 7) % 5),
      bSimple: (1 + ((i * 7) % 5)) / (0.01 * (i + 1)),
    })),
  };
}

/** Subjects behind a DashboardSources, replaying like the sidecar's. */
export function scriptedSources() {
  const stats = new ReplaySubject<StepStats>(1);
  const layers = new ReplaySubject<LayerStats>(1);
  const runs = new BehaviorSubject<readonly RunInfo[]>([]);
  const healthS = new ReplaySubject<Health>(1);
  const log = new Subject<string>();
  const recommendations = new ReplaySubject<Recommendation>(1);
  const sources: DashboardSources = {
    stats$: stats.asObservable(),
    layers$: layers.asObservable(),
    runs$: runs.asObservable(),
    health$: healthS.asObservable(),
    log$: log.asObservable(),
    recommendations$: recommendations.asObservable(),
  };
  return { sources, stats, layers, runs, health: healthS, log, recommendations };
}
