import type { GradientDiversity, Source } from '../types.js';

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
  /** FSDP: reducedSqNorms is this rank's shard of the reduced gradient (the ranks' shards sum to it). */
  readonly reducedIsShard?: boolean;
  /**
   * Per-example source: Σ over micro-batch i's examples of |that example's
   * contribution|², [microBatch][layer] (units of microSqNorms); null without it.
   */
  readonly microExampleSqNormSums: readonly (readonly number[])[] | null;
  /** Present (true) when some micro-batch's per-example sums were sampled estimates (PerExampleSqNorms.sampled). */
  readonly perExampleSampled?: true;
  /** Dense steps: pairwise cosines of the micro-batch gradients, from the Gram matrices. */
  readonly diversity?: GradientDiversity;
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

/**
 * Where the step's second batch scale came from. Per-example sums are the
 * finest level, so a step that has them reports 'per-example' even when it
 * also has accumulation or ranks (StepStats.levels says how many scales).
 */
export function sourceOf(step: CompletedStep): Source {
  if (step.ranks.some((r) => r.microExampleSqNormSums !== null)) return 'per-example';
  if (step.ranks.length > 1) return 'data-parallel';
  if (step.ranks.some((r) => r.microExamples.length > 1)) return 'accumulation';
  return 'none';
}

/** Some rank's per-example sums for the step were sampled estimates, not exact sums. */
export function perExampleSampledIn(step: CompletedStep): boolean {
  return step.ranks.some((r) => r.perExampleSampled === true);
}
