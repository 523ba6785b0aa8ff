import type { BatchPolicy } from '../types.js';
import type { BatchFacts } from './batch-facts.js';
import { type BatchShape, nearestReachableBatch } from './granularity.js';

/** What kept the recommended batch from the target, if anything. */
export type BatchLimit = 'max factor' | 'max batch' | 'min batch' | 'single step';

export interface BatchChoice extends BatchShape {
  readonly limit: BatchLimit | null;
}

const clamp = (v: number, lo: number, hi: number): number => Math.min(Math.max(v, lo), hi);

/**
 * The batch to move to for a target t (objective × B_simple): t clamped to
 * [B/maxFactor, B·maxFactor], then to [minBatch, maxBatch] (bounds win over the
 * factor when the current batch lies outside them), rounded to the granularity.
 * Rounding never crosses the factor unless the granularity's single next step
 * already does (e.g. accumulation 1 → 2 under maxFactor 1.5): then that one step.
 * Returns the current batch when it is the nearest the granularity allows.
 */
export function chooseBatch(target: number, facts: BatchFacts, policy: BatchPolicy): BatchChoice | null {
  const B = facts.globalBatch;
  const capLow = B / policy.maxFactor;
  const capHigh = B * policy.maxFactor;
  const capped = clamp(target, capLow, capHigh);
  const bounded = clamp(capped, policy.minBatch, policy.maxBatch);
  const limit: BatchLimit | null =
    bounded !== capped ? (bounded === policy.maxBatch ? 'max batch' : 'min batch') : capped !== target ? 'max factor' : null;
  const nearest = nearestReachableBatch(bounded, policy.minBatch, policy.maxBatch, facts, policy.maxMicroBatch);
  if (!nearest) return null;
  const n = nearest.globalBatch;
  if (n === B || (n >= capLow && n <= capHigh) || bounded !== capped) return { ...nearest, limit };
  // Rounding overshot the factor: the nearest batch within it, if that still moves.
  const within = nearestReachableBatch(bounded, Math.max(policy.minBatch, capLow), Math.min(policy.maxBatch, capHigh), facts, policy.maxMicroBatch);
  if (within && within.globalBatch !== B) return { ...within, limit: limit ?? 'max factor' };
  const step = nextBatch(facts, policy, n > B);
  return step ? { ...step, limit: 'single step' } : { ...nearest, limit };
}

/** The reachable batch next to the current one, above or below it, within the bounds; null at the end of the range. */
export function nextBatch(facts: BatchFacts, policy: BatchPolicy, up: boolean): BatchShape | null {
  const B = facts.globalBatch;
  return up
    ? nearestReachableBatch(Math.floor(B) + 1, Math.floor(B) + 1, policy.maxBatch, facts, policy.maxMicroBatch)
    : nearestReachableBatch(Math.ceil(B) - 1, policy.minBatch, Math.ceil(B) - 1, facts, policy.maxMicroBatch);
}
