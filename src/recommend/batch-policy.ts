import type { BatchPolicy, Objective } from '../types.js';

export const OBJECTIVES: readonly Objective[] = ['balanced', 'time', 'compute'];

/** Target batch = factor × B_noise: the knee, or a side of it (see the proto's Objective). */
export const OBJECTIVE_FACTOR: Readonly<Record<Objective, number>> = { balanced: 1, time: 4, compute: 0.25 };

export const DEFAULT_BATCH_POLICY: BatchPolicy = Object.freeze({
  objective: 'balanced',
  minBatch: 1,
  maxBatch: Number.POSITIVE_INFINITY,
  maxMicroBatch: null,
  maxFactor: 2,
  window: 10,
  monotone: false,
});

/** Throws a RangeError naming the first bad value; bounds that cannot both hold are one. */
export function validateBatchPolicy(p: BatchPolicy): void {
  if (!OBJECTIVES.includes(p.objective)) {
    throw new RangeError(`objective must be one of ${OBJECTIVES.join(', ')}, got ${String(p.objective)}`);
  }
  const wholeAtLeastOne = (name: string, v: number) => {
    if (!(Number.isInteger(v) && v >= 1)) throw new RangeError(`${name} must be a whole number ≥ 1, got ${String(v)}`);
  };
  wholeAtLeastOne('min batch', p.minBatch);
  if (p.maxBatch !== Number.POSITIVE_INFINITY) wholeAtLeastOne('max batch', p.maxBatch);
  if (p.maxBatch < p.minBatch) throw new RangeError(`max batch ${p.maxBatch} is below min batch ${p.minBatch}: no batch satisfies both`);
  if (p.maxMicroBatch !== null) wholeAtLeastOne('max micro-batch', p.maxMicroBatch);
  if (!(typeof p.maxFactor === 'number' && Number.isFinite(p.maxFactor) && p.maxFactor > 1)) {
    throw new RangeError(`max factor per change must be a finite number above 1, got ${String(p.maxFactor)}`);
  }
  wholeAtLeastOne('window', p.window);
  if (typeof p.monotone !== 'boolean') throw new RangeError(`monotone must be true or false, got ${String(p.monotone)}`);
}

/** The sidecar's defaults overridden by what the run's Hello set. */
export function mergePolicy(defaults: BatchPolicy, run: Partial<BatchPolicy>): BatchPolicy {
  return { ...defaults, ...run };
}
