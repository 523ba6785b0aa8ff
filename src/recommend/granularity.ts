import type { BatchFacts } from './batch-facts.js';

/** A global batch and how a run reaches it. */
export interface BatchShape {
  readonly globalBatch: number;
  readonly microBatch: number;
  readonly accumulationSteps: number;
}

// Beyond this many accumulation counts past the fewest, one example per micro-batch is the answer.
const ACCUMULATION_SEARCH = 64;

const clamp = (v: number, lo: number, hi: number): number => Math.min(Math.max(v, lo), hi);

/**
 * The batch this run can take (micro-batch × accumulation × world size) nearest
 * `target` within [low, high]; null when none lies there.
 * maxMicroBatch null: the run keeps its micro-batch, only accumulation moves.
 * Otherwise the fewest accumulation steps that can reach the target with
 * micro-batches ≤ maxMicroBatch, then the micro-batch nearest the target.
 */
export function nearestReachableBatch(
  target: number,
  low: number,
  high: number,
  facts: BatchFacts,
  maxMicroBatch: number | null,
): BatchShape | null {
  const W = facts.worldSize;
  if (maxMicroBatch === null) return alongAccumulation(target, low, high, facts.microBatch, W, facts.minAccumulation);
  const fewest = Math.max(facts.minAccumulation, Math.ceil(target / (maxMicroBatch * W)));
  for (let a = fewest; a < fewest + ACCUMULATION_SEARCH && a * W <= high; a++) {
    const unit = a * W;
    const microLow = Math.max(1, Math.ceil(low / unit));
    const microHigh = Math.min(maxMicroBatch, Math.floor(high / unit));
    if (microLow <= microHigh) {
      const micro = clamp(Math.round(target / unit), microLow, microHigh);
      return { globalBatch: micro * unit, microBatch: micro, accumulationSteps: a };
    }
  }
  // Narrow bounds that no coarser step fits: one example per device per micro-batch always does.
  return alongAccumulation(target, low, high, 1, W, facts.minAccumulation);
}

function alongAccumulation(target: number, low: number, high: number, micro: number, W: number, minAccumulation: number): BatchShape | null {
  const unit = micro * W;
  const fewest = Math.max(minAccumulation, Math.ceil(low / unit));
  const most = Math.floor(high / unit);
  if (fewest > most) return null;
  const a = clamp(Math.round(target / unit), fewest, most);
  return { globalBatch: a * unit, microBatch: micro, accumulationSteps: a };
}
