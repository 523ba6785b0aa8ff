import type { RunInfo, StepStats } from '../types.js';

/** A step's batch in the user's terms: what the policy rounds to and reports back. */
export interface BatchFacts {
  /** B: examples per optimizer step over all ranks. */
  readonly globalBatch: number;
  /** W. */
  readonly worldSize: number;
  /** Examples per device per micro-batch. */
  readonly microBatch: number;
  /** Micro-batches per rank per optimizer step. */
  readonly accumulationSteps: number;
  /** One rank needs two micro-batches for a second batch scale (else no estimate at all); ranks or per-example norms give it otherwise. */
  readonly minAccumulation: number;
}

const positiveFinite = (v: number): boolean => typeof v === 'number' && Number.isFinite(v) && v > 0;

/** Null when the step's counts cannot describe a batch (zero, negative or non-finite). */
export function batchFacts(stats: StepStats, run: RunInfo): BatchFacts | null {
  const { globalBatch, microBatches, ranks } = stats;
  const worldSize = run.worldSize;
  if (!positiveFinite(globalBatch) || !(microBatches >= 1) || !(ranks >= 1) || !positiveFinite(microBatches) || !positiveFinite(ranks)) {
    return null;
  }
  if (!(Number.isInteger(worldSize) && worldSize >= 1)) return null;
  const microBatch = Math.round(globalBatch / microBatches);
  if (microBatch < 1) return null;
  return {
    globalBatch,
    worldSize,
    microBatch,
    // Uneven micro-batch counts across ranks round to the nearest whole count.
    accumulationSteps: Math.max(1, Math.round(microBatches / ranks)),
    // Per-example norms give a one-micro-batch step its second scale; otherwise one rank needs two micro-batches.
    minAccumulation: worldSize === 1 && stats.source !== 'per-example' ? 2 : 1,
  };
}
