import { defer, filter, map, type OperatorFunction } from 'rxjs';
import type { BatchPolicy, Recommendation, RunInfo, StepStats } from '../types.js';
import { RunPolicy } from './run-policy.js';

/** One run's step statistics with the run as the sidecar knows it at that moment. */
export interface PolicyInput {
  readonly stats: StepStats;
  /** Undefined if the run is not (or no longer) known. */
  readonly run: RunInfo | undefined;
}

/**
 * Step statistics in, a Recommendation out whenever a run's advice changes
 * (its action or its recommended batch; see RunPolicy). Per-run state; never
 * errors the stream: a step the policy cannot digest gives no advice.
 */
export function recommendBatchSize(
  defaults: BatchPolicy,
  /** A run's policy rebuilt from elsewhere (its run log), looked up once at its first step; null starts it afresh. */
  resume?: (run: string) => RunPolicy | null,
): OperatorFunction<PolicyInput, Recommendation> {
  return (source) =>
    defer(() => {
      const runs = new Map<string, RunPolicy>();
      const observe = ({ stats, run }: PolicyInput): Recommendation | null => {
        if (!run || typeof stats.run !== 'string') return null;
        let policy = runs.get(stats.run);
        if (!policy) {
          policy = resume?.(stats.run) ?? new RunPolicy(defaults);
          runs.set(stats.run, policy);
        }
        return policy.observe(stats, run);
      };
      return source.pipe(
        map((input) => {
          try {
            return observe(input);
          } catch {
            // A bug on one odd step must not end every run's advice; the tests keep odd inputs from getting here.
            return null;
          }
        }),
        filter((r): r is Recommendation => r !== null),
      );
    });
}
