// Public value types → proto messages for the Watch stream (null → NaN or unset).
import type { BatchPolicy, Estimate, Health, LayerStats, Objective, Recommendation, RecommendationAction, RunInfo, Source, StepStats } from '../types.js';
import type { Action as WireAction } from './generated/noisescope/v1/Action.js';
import type { BatchPolicy as WireBatchPolicy } from './generated/noisescope/v1/BatchPolicy.js';
import type { Objective as WireObjective } from './generated/noisescope/v1/Objective.js';
import type { Recommendation as WireRecommendation } from './generated/noisescope/v1/Recommendation.js';
import type { Estimate as WireEstimate } from './generated/noisescope/v1/Estimate.js';
import type { Health as WireHealth } from './generated/noisescope/v1/Health.js';
import type { LayerStats as WireLayerStats } from './generated/noisescope/v1/LayerStats.js';
import type { RunInfo as WireRunInfo } from './generated/noisescope/v1/RunInfo.js';
import type { Source as WireSource } from './generated/noisescope/v1/Source.js';
import type { StepStats as WireStepStats } from './generated/noisescope/v1/StepStats.js';

const SOURCES: Readonly<Record<Source, WireSource>> = {
  none: 'SOURCE_NONE',
  accumulation: 'SOURCE_ACCUMULATION',
  'data-parallel': 'SOURCE_DATA_PARALLEL',
  'per-example': 'SOURCE_PER_EXAMPLE',
  probe: 'SOURCE_PROBE',
};

const OBJECTIVES: Readonly<Record<Objective, WireObjective>> = {
  balanced: 'OBJECTIVE_BALANCED',
  time: 'OBJECTIVE_TIME',
  compute: 'OBJECTIVE_COMPUTE',
};
const ACTIONS: Readonly<Record<RecommendationAction, WireAction>> = {
  hold: 'ACTION_HOLD',
  increase: 'ACTION_INCREASE',
  decrease: 'ACTION_DECREASE',
};

const orNaN = (v: number | null): number => v ?? Number.NaN;

export function runInfoToWire(info: RunInfo): WireRunInfo {
  return {
    run: info.run,
    worldSize: info.worldSize,
    ranksConnected: info.ranksConnected,
    source: SOURCES[info.source],
    mode: info.mode === 'norms' ? 'MODE_NORMS' : info.mode === 'dense' ? 'MODE_DENSE' : 'MODE_SKETCH',
    layers: info.layers.length,
    parameters: info.parameters,
    datasetSize: info.datasetSize ?? 0,
    startedUnixMs: info.startedUnixMs,
    layerDetails: info.layers.map((l) => ({ name: l.name, numel: l.numel, kind: l.kind })),
    every: info.every,
    optimizer: info.optimizer ?? '',
    policy: policyToWire(info.policy),
    uncoveredLayers: info.uncoveredLayers.map((l) => ({ name: l.name, numel: l.numel, kind: l.kind })),
    sketch: info.sketch ? { sizes: [...info.sketch.sizes], dtype: info.sketch.dtype } : null,
    perExampleSampled: info.perExampleSampled ?? false,
  };
}

/** Unset fields → 0 (the wire's "the sidecar's default"). */
export function policyToWire(p: Partial<BatchPolicy>): WireBatchPolicy {
  return {
    objective: p.objective ? OBJECTIVES[p.objective] : 'OBJECTIVE_UNSPECIFIED',
    minBatch: p.minBatch ?? 0,
    maxBatch: p.maxBatch === undefined || p.maxBatch === Number.POSITIVE_INFINITY ? 0 : p.maxBatch,
    maxMicroBatch: p.maxMicroBatch ?? 0,
    maxFactor: p.maxFactor ?? 0,
    window: p.window ?? 0,
    monotone: p.monotone ?? false,
  };
}

export function recommendationToWire(r: Recommendation): WireRecommendation {
  return {
    run: r.run,
    step: r.step,
    currentGlobalBatch: r.currentGlobalBatch,
    recommendedGlobalBatch: r.recommendedGlobalBatch,
    microBatch: r.microBatch,
    accumulationSteps: r.accumulationSteps,
    confidence: r.confidence,
    reason: r.reason,
    action: ACTIONS[r.action],
    sequence: r.sequence,
    noiseScale: r.noiseScale,
    noiseScaleInterval: { low: r.interval.low, high: r.interval.high },
    targetBatch: r.targetBatch,
    objective: OBJECTIVES[r.objective],
    stepsFactor: r.stepsFactor,
    examplesFactor: r.examplesFactor,
    lrHint: r.lrHint ? { ...r.lrHint } : null,
    worldSize: r.worldSize,
    unixMs: r.unixMs,
  };
}

function estimateToWire(e: Estimate | null): WireEstimate | null {
  if (!e) return null;
  return {
    gradSqNorm: e.gradSqNorm,
    traceSigma: e.traceSigma,
    bSimple: orNaN(e.bSimple),
    bSimpleInterval: e.interval ? { low: e.interval.low, high: e.interval.high } : null,
    trusted: e.trusted,
    spread: e.spread ? { ...e.spread } : null,
  };
}

export function stepStatsToWire(s: StepStats): WireStepStats {
  return {
    run: s.run,
    step: s.step,
    source: SOURCES[s.source],
    globalBatch: s.globalBatch,
    microBatches: s.microBatches,
    ranks: s.ranks,
    levels: s.levels,
    raw: estimateToWire(s.raw),
    smoothed: estimateToWire(s.smoothed),
    lr: orNaN(s.lr),
    loss: orNaN(s.loss),
    skipped: s.skipped,
    note: s.note ?? '',
    unixMs: s.unixMs,
    stepsMeasured: s.stepsMeasured,
    temperature: orNaN(s.temperature),
    regimeStartStep: s.regimeStartStep,
    temperatureChange: s.temperatureChange ? { ...s.temperatureChange } : null,
    diversity: (s.diversity ?? []).map((d) => ({
      rank: d.rank,
      microBatches: d.microBatches,
      cosines: [...d.cosines],
      layers: d.layerCosines.map((c) => ({ cosines: [...c] })),
      meanCosine: [...d.meanCosine],
      disagreeing: [...d.disagreeing],
      acrossRanks: d.acrossRanks ? { ...d.acrossRanks, cosines: [...d.acrossRanks.cosines] } : null,
    })),
  };
}

export function layerStatsToWire(s: LayerStats): WireLayerStats {
  return {
    run: s.run,
    step: s.step,
    layers: s.layers.map((l) => ({ ...l, bSimple: orNaN(l.bSimple) })),
  };
}

export function healthToWire(h: Health): WireHealth {
  return { ...h };
}
