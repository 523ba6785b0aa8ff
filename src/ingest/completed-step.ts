import type { Source } from '../types.js';

// One optimizer step of one run, every rank's shards joined.

export interface RankStep {
  readonly rank: number;
  /** Squared norms of each micro-batch's contribution: [microBatch][layer]. */
  readonly microSqNorms: readonly (readonly number[])[];
  /** Examples behind each micro-batch. */
  readonly microExamples: readonly number[];
  /** |Σ contributions|^2 per layer (the accumulated gradient, before clipping). */
  readonly accumulatedSqNorms: readonly number[];
  /** After the all-reduce, per layer; null without data parallelism. */
  readonly reducedSqNorms: readonly number[] | null;
}

export interface CompletedStep {
  readonly run: string;
  readonly step: number;
  readonly ranks: readonly RankStep[];
  readonly globalExamples: number;
  readonly lr: number | null;
  readonly loss: number | null;
  /** Non-finite gradients on some rank: flagged, excluded from the estimate. */
  readonly skipReason: string | null;
  readonly unixMs: number;
}

/** Where the step's second batch scale came from. */
export function sourceOf(step: CompletedStep): Source {
  if (step.ranks.length > 1) return 'data-parallel';
  if (step.ranks.some((r) => r.microExamples.length > 1)) return 'accumulation';
  return 'none';
}
