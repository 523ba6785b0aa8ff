// Public value types → proto messages for the Watch stream (null → NaN or unset).
import type { Estimate, Health, LayerStats, RunInfo, Source, StepStats } from '../types.js';
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
