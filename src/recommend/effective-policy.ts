import type { BatchPolicy } from '../types.js';
import type { BatchFacts } from './batch-facts.js';
import { mergePolicy, validateBatchPolicy } from './batch-policy.js';

export type EffectivePolicy = { readonly policy: BatchPolicy; readonly problem: null } | { readonly policy: null; readonly problem: string };

const plural = (n: number, one: string, many: string): string => `${n} ${n === 1 ? one : many}`;

/**
 * The sidecar's defaults overridden by the run's Hello, or the plain-words
 * problem that keeps the run from following the noise scale: an invalid
 * merged policy, or bounds no batch of this run's granularity can satisfy.
 */
export function effectivePolicy(defaults: BatchPolicy, overrides: Partial<BatchPolicy>, facts: BatchFacts): EffectivePolicy {
  const policy = mergePolicy(defaults, overrides);
  try {
    validateBatchPolicy(policy);
  } catch (error) {
    return { policy: null, problem: `cannot follow the noise scale: ${(error as Error).message}` };
  }
  // With a max micro-batch the policy may pick any micro-batch down to 1, so one example per device is the unit.
  const micro = policy.maxMicroBatch === null ? facts.microBatch : 1;
  const unit = micro * facts.worldSize;
  const parts = [`${micro} per micro-batch`];
  if (facts.worldSize > 1) parts.push(plural(facts.worldSize, 'rank', 'ranks'));
  if (facts.minAccumulation > 1) parts.push(`${facts.minAccumulation} accumulation steps (one rank needs two to measure)`);
  const smallest = unit * facts.minAccumulation;
  if (smallest > policy.maxBatch) {
    return {
      policy: null,
      problem: `cannot follow the noise scale: the smallest batch this run can take, ${parts.join(' × ')} = ${smallest}, is above max batch ${policy.maxBatch}`,
    };
  }
  const fewest = Math.max(facts.minAccumulation, Math.ceil(policy.minBatch / unit));
  if (fewest * unit > policy.maxBatch) {
    return {
      policy: null,
      problem: `cannot follow the noise scale: no batch from min batch ${policy.minBatch} to max batch ${policy.maxBatch} is a multiple of ${unit} (${parts.slice(0, 2).join(' × ')})`,
    };
  }
  return { policy, problem: null };
}
