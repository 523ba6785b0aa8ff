// Proto messages from the Watch stream → the public value types (the inverse of
// transport/to-wire.ts: NaN → null, '' → null, 0 dataset size → null).
import type { Estimate as WireEstimate } from '../transport/generated/noisescope/v1/Estimate.js';
import type { Health__Output as WireHealth } from '../transport/generated/noisescope/v1/Health.js';
import type { LayerStats__Output as WireLayerStats } from '../transport/generated/noisescope/v1/LayerStats.js';
import type { RunInfo__Output as WireRunInfo } from '../transport/generated/noisescope/v1/RunInfo.js';
import type { Source__Output as WireSource } from '../transport/generated/noisescope/v1/Source.js';
import type { StepStats__Output as WireStepStats } from '../transport/generated/noisescope/v1/StepStats.js';
import type { Recommendation__Output as WireRecommendation } from '../transport/generated/noisescope/v1/Recommendation.js';
import type { Objective__Output as WireObjective } from '../transport/generated/noisescope/v1/Objective.js';
import type { Action__Output as WireAction } from '../transport/generated/noisescope/v1/Action.js';
import { policyFromWire } from '../ingest/policy-from-wire.js';
import type { Estimate, Health, LayerStats, Objective, Recommendation, RecommendationAction, RunInfo, Source, StepStats } from '../types.js';

const SOURCES: Readonly<Record<WireSource, Source>> = {
  SOURCE_UNSPECIFIED: 'none',
  SOURCE_NONE: 'none',
  SOURCE_ACCUMULATION: 'accumulation',
  SOURCE_DATA_PARALLEL: 'data-parallel',
  SOURCE_PER_EXAMPLE: 'per-example',
  SOURCE_PROBE: 'probe',
};

const OBJECTIVES: Readonly<Record<WireObjective, Objective>> = {
  OBJECTIVE_UNSPECIFIED: 'balanced',
  OBJECTIVE_BALANCED: 'balanced',
  OBJECTIVE_TIME: 'time',
  OBJECTIVE_COMPUTE: 'compute',
};
const ACTIONS: Readonly<Record<WireAction, RecommendationAction>> = {
  ACTION_UNSPECIFIED: 'hold',
  ACTION_HOLD: 'hold',
  ACTION_INCREASE: 'increase',
  ACTION_DECREASE: 'decrease',
};

const orNull = (v: number): number | null => (Number.isNaN(v) ? null : v);

/** `ended` is not a RunInfo field on the wire: it comes as the run_ended event. */
export function runInfoFromWire(w: WireRunInfo, ended: boolean): RunInfo {
  return {
    run: w.run,
    worldSize: w.worldSize,
    ranksConnected: w.ranksConnected,
    source: SOURCES[w.source] ?? 'none',
    mode: w.mode === 'MODE_DENSE' ? 'dense' : w.mode === 'MODE_SKETCH' ? 'sketch' : 'norms',
    layers: w.layerDetails.map((l) => ({ name: l.name, numel: l.numel, kind: l.kind })),
    parameters: w.parameters,
    uncoveredLayers: w.uncoveredLayers.map((l) => ({ name: l.name, numel: l.numel, kind: l.kind })),
    datasetSize: w.datasetSize > 0 ? w.datasetSize : null,
    every: Math.max(1, w.every),
    startedUnixMs: w.startedUnixMs,
    ended,
    optimizer: w.optimizer === '' ? null : w.optimizer,
    policy: policyFromWire(w.policy),
    ...(w.sketch && w.sketch.sizes.length > 0 ? { sketch: { sizes: w.sketch.sizes, dtype: w.sketch.dtype === 'DTYPE_UNSPECIFIED' ? 'DTYPE_F32' : w.sketch.dtype } } : {}),
    ...(w.perExampleSampled ? { perExampleSampled: true as const } : {}),
  };
}

function estimateFromWire(e: WireEstimate | null | undefined): Estimate | null {
  if (!e) return null;
  const interval = e.bSimpleInterval;
  return {
    gradSqNorm: Number(e.gradSqNorm ?? 0),
    traceSigma: Number(e.traceSigma ?? 0),
    bSimple: orNull(Number(e.bSimple ?? Number.NaN)),
    interval: interval ? { low: Number(interval.low ?? 0), high: Number(interval.high ?? 0) } : null,
    trusted: e.trusted ?? false,
    ...(e.spread ? { spread: { varGradSqNorm: Number(e.spread.varGradSqNorm), varTraceSigma: Number(e.spread.varTraceSigma), covariance: Number(e.spread.covariance), df: Number(e.spread.df) } } : {}),
  };
}

export function stepStatsFromWire(w: WireStepStats): StepStats {
  return {
    run: w.run,
    step: w.step,
    source: SOURCES[w.source] ?? 'none',
    globalBatch: w.globalBatch,
    microBatches: w.microBatches,
    ranks: w.ranks,
    levels: w.levels,
    raw: estimateFromWire(w.raw),
    smoothed: estimateFromWire(w.smoothed),
    lr: orNull(w.lr),
    loss: orNull(w.loss),
    skipped: w.skipped,
    note: w.note === '' ? null : w.note,
    unixMs: w.unixMs,
    stepsMeasured: w.stepsMeasured,
    temperature: orNull(w.temperature),
    regimeStartStep: w.regimeStartStep,
    temperatureChange: w.temperatureChange ? { ...w.temperatureChange } : null,
    // Absent on norms steps, as on the sidecar's own stats$.
    ...(w.diversity.length > 0
      ? {
          diversity: w.diversity.map((d) => ({
            rank: d.rank,
            microBatches: d.microBatches,
            cosines: d.cosines,
            layerCosines: d.layers.map((l) => l.cosines),
            meanCosine: d.meanCosine,
            disagreeing: d.disagreeing,
            ...(d.acrossRanks ? { acrossRanks: { ...d.acrossRanks } } : {}),
          })),
        }
      : {}),
  };
}

export function layerStatsFromWire(w: WireLayerStats): LayerStats {
  return {
    run: w.run,
    step: w.step,
    layers: w.layers.map((l) => ({
      name: l.name,
      numel: l.numel,
      gradSqNorm: l.gradSqNorm,
      traceSigma: l.traceSigma,
      bSimple: orNull(l.bSimple),
    })),
  };
}

export function healthFromWire(w: WireHealth): Health {
  return {
    unixMs: w.unixMs,
    ranksConnected: w.ranksConnected,
    messages: w.messages,
    bytes: w.bytes,
    refused: w.refused,
    stepsCompleted: w.stepsCompleted,
    stepsIncomplete: w.stepsIncomplete,
    droppedByHooks: w.droppedByHooks,
    computeBackend: w.computeBackend,
    ranksGone: w.ranksGone,
    watchEventsDropped: w.watchEventsDropped,
  };
}

export function recommendationFromWire(w: WireRecommendation): Recommendation {
  return {
    run: w.run,
    step: w.step,
    sequence: w.sequence,
    action: ACTIONS[w.action] ?? 'hold',
    currentGlobalBatch: w.currentGlobalBatch,
    recommendedGlobalBatch: w.recommendedGlobalBatch,
    microBatch: w.microBatch,
    accumulationSteps: w.accumulationSteps,
    worldSize: w.worldSize,
    noiseScale: w.noiseScale,
    interval: { low: w.noiseScaleInterval?.low ?? 0, high: w.noiseScaleInterval?.high ?? Number.POSITIVE_INFINITY },
    targetBatch: w.targetBatch,
    objective: OBJECTIVES[w.objective] ?? 'balanced',
    stepsFactor: w.stepsFactor,
    examplesFactor: w.examplesFactor,
    lrHint: w.lrHint ? { ...w.lrHint, rule: w.lrHint.rule === 'linear' ? 'linear' : 'sqrt' } : null,
    confidence: w.confidence,
    reason: w.reason,
    unixMs: w.unixMs,
  };
}
