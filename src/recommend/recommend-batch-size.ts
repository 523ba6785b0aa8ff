import { type OperatorFunction } from 'rxjs';
import type { BatchPolicy, Recommendation, RunInfo, StepStats } from '../types.js';

/** One run's step statistics with the run as the sidecar knows it at that moment. */
export interface PolicyInput {
  readonly stats: StepStats;
  /** Undefined if the run is not (or no longer) known. */
  readonly run: RunInfo | undefined;
}

/**
 * Step statistics in, a Recommendation out whenever a run's advice changes
 * (its action or its recommended batch). Per-run state; never errors the stream.
 * TODO(issue 4): implemented by the policy work in this directory.
 */
export function recommendBatchSize(defaults: BatchPolicy): OperatorFunction<PolicyInput, Recommendation> {
  void defaults;
  throw new Error('recommendBatchSize: not implemented yet');
}
