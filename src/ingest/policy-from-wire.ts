import { NoiseScopeError } from '../errors.js';
import type { BatchPolicy as WireBatchPolicy } from '../transport/generated/noisescope/v1/BatchPolicy.js';
import type { BatchPolicy, Objective } from '../types.js';

const OBJECTIVES: Readonly<Record<string, Objective | undefined>> = {
  OBJECTIVE_BALANCED: 'balanced',
  OBJECTIVE_TIME: 'time',
  OBJECTIVE_COMPUTE: 'compute',
};

/**
 * A Hello's BatchPolicy → the fields it set (0 / unspecified = the sidecar's
 * default). Each field is checked on its own here; whether the merged policy
 * can be satisfied is the recommender's question (it depends on the batch).
 */
export function policyFromWire(wire: WireBatchPolicy | null | undefined): Partial<BatchPolicy> {
  if (!wire) return {};
  const invalid = (why: string) => new NoiseScopeError('invalid-message', `Hello policy: ${why}`);
  const policy: { -readonly [K in keyof BatchPolicy]?: BatchPolicy[K] } = {};
  const objective = wire.objective ?? 'OBJECTIVE_UNSPECIFIED';
  if (objective !== 'OBJECTIVE_UNSPECIFIED' && objective !== 0) {
    const known = OBJECTIVES[String(objective)];
    if (!known) throw invalid(`unknown objective ${String(objective)}`);
    policy.objective = known;
  }
  const minBatch = Number(wire.minBatch ?? 0);
  const maxBatch = Number(wire.maxBatch ?? 0);
  if (minBatch > 0) policy.minBatch = minBatch;
  if (maxBatch > 0) policy.maxBatch = maxBatch;
  if (minBatch > 0 && maxBatch > 0 && maxBatch < minBatch) {
    throw invalid(`max_batch ${maxBatch} is below min_batch ${minBatch}`);
  }
  const maxMicroBatch = Number(wire.maxMicroBatch ?? 0);
  if (maxMicroBatch > 0) policy.maxMicroBatch = maxMicroBatch;
  const maxFactor = Number(wire.maxFactor ?? 0);
  if (maxFactor !== 0) {
    if (!(Number.isFinite(maxFactor) && maxFactor > 1)) throw invalid(`max_factor must be a finite number above 1, got ${maxFactor}`);
    policy.maxFactor = maxFactor;
  }
  const window = Number(wire.window ?? 0);
  if (window > 0) policy.window = window;
  if (wire.monotone) policy.monotone = true;
  return policy;
}
