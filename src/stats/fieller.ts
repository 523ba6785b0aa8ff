import type { Interval } from '../types.js';

/**
 * Fieller's confidence set for a non-negative ratio ρ = μ_num/μ_den from
 * estimates (num, den) with variances and covariance: every ρ ≥ 0 with
 * (num − ρ·den)² ≤ q·Var(num − ρ·den), q = quantile². It is a bounded
 * interval only when den is significantly > 0 (den² > q·varDen); otherwise
 * `high` is Infinity and `low` is the least ρ ≥ 0 the data cannot reject.
 */
export function fiellerInterval(
  num: number,
  den: number,
  varNum: number,
  varDen: number,
  covNumDen: number,
  quantile: number,
): Interval {
  const unbounded: Interval = { low: 0, high: Number.POSITIVE_INFINITY };
  const q = quantile * quantile;
  if (!Number.isFinite(q) || !Number.isFinite(varNum) || !Number.isFinite(varDen)) return unbounded;
  // Confidence set: a·ρ² − 2b·ρ + c ≤ 0.
  const a = den * den - q * varDen;
  const b = num * den - q * covNumDen;
  const c = num * num - q * varNum;
  const s = Math.sqrt(Math.max(0, b * b - a * c));
  // A denominator significantly below zero is no |G|² at all: say nothing.
  if (a > 0 && den <= 0) return unbounded;
  if (a > 0) {
    // Roots in the cancellation-free form.
    let r1: number;
    let r2: number;
    if (b >= 0) {
      r2 = (b + s) / a;
      r1 = b + s > 0 ? c / (b + s) : 0;
    } else {
      r1 = (b - s) / a;
      r2 = c / (b - s);
    }
    // tr(Σ) ≥ 0 and |G|² > 0, so B_simple ≥ 0: clipping at 0 loses no coverage.
    return { low: Math.max(0, r1), high: Math.max(0, r2) };
  }
  // Unbounded: if ρ = 0 is rejected (num significantly > 0), the set starts at the positive root.
  if (c > 0 && b + s > 0) return { low: c / (b + s), high: Number.POSITIVE_INFINITY };
  return unbounded;
}
