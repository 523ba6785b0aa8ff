import type { Estimate, RecommendationAction } from '../types.js';
import { normalQuantile, studentTCdf } from '../stats/quantiles.js';
import { DEFAULT_SMOOTHING } from '../stats/smoothing-options.js';

/**
 * Fieller's t statistic for H0 "objective × B_noise = B", i.e. tr(Σ) − r0·|G|² = 0
 * with r0 = B/factor; positive when the target lies above B. Null without a usable spread.
 */
function fiellerT(estimate: Estimate, factor: number, currentBatch: number): { t: number; df: number } | null {
  const spread = estimate.spread;
  if (!spread) return null;
  const r0 = currentBatch / factor;
  const variance = spread.varTraceSigma - 2 * r0 * spread.covariance + r0 * r0 * spread.varGradSqNorm;
  if (!(Number.isFinite(variance) && variance > 0 && spread.df > 0)) return null;
  const t = (estimate.traceSigma - r0 * estimate.gradSqNorm) / Math.sqrt(variance);
  return Number.isFinite(t) ? { t, df: spread.df } : null;
}

/**
 * Without the spread: the interval read as a symmetric one on a log scale at
 * the sidecar's default confidence (the step does not say which it was), its
 * half on the target's side giving the standard error. An approximation.
 */
function intervalZ(estimate: Estimate, factor: number, currentBatch: number): number {
  const b = estimate.bSimple;
  const interval = estimate.interval;
  if (b === null || !(b > 0) || !interval) return 0;
  const z95 = normalQuantile(0.5 + DEFAULT_SMOOTHING.confidence / 2);
  const distance = Math.log((factor * b) / currentBatch);
  const halfWidth = distance > 0 ? Math.log(b / interval.low) : Math.log(interval.high / b);
  const z = distance / (halfWidth / z95);
  return Number.isNaN(z) ? 0 : z;
}

/**
 * For a change, the one-sided probability that objective × B_noise lies on the
 * side of the current batch the change moves to; for a hold, the two-sided
 * p-value of "the current batch is the target" (how well it fits).
 */
export function recommendationConfidence(estimate: Estimate, factor: number, currentBatch: number, action: RecommendationAction): number {
  const fieller = fiellerT(estimate, factor, currentBatch);
  const t = fieller ? fieller.t : intervalZ(estimate, factor, currentBatch);
  const df = fieller ? fieller.df : Number.POSITIVE_INFINITY;
  if (action === 'hold') return 2 * (1 - studentTCdf(Math.abs(t), df));
  // Signed, not |t|: a change the bounds force against the evidence (a batch above max batch) gets < 0.5.
  return studentTCdf(action === 'increase' ? t : -t, df);
}
