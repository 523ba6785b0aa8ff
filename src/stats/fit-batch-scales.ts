import type { BatchScale, StepEstimate } from './batch-scales.js';

// x values closer than this (relative to the largest) count as one batch scale.
const DISTINCT_X_TOLERANCE = 1e-12;

/**
 * Unbiased |G|² and tr(Σ) for one step: the line E[y] = |G|² + tr(Σ)·x through
 * the step's batch scales. Two distinct x give the exact line (the paper's
 * two-batch formulas); more give weighted least squares with fixed weights.
 * Null when fewer than two distinct x (or no usable scale).
 */
export function fitBatchScales(scales: readonly BatchScale[]): StepEstimate | null {
  const usable = scales.filter((s) => s.n > 0);
  let xMax = 0;
  for (const s of usable) xMax = Math.max(xMax, Math.abs(s.x));
  if (!(xMax > 0)) return null;
  // A level at x = 0 (the whole dataset, with the FPC) is exact: floor its weight's x instead of dividing by zero.
  const xFloor = xMax * 1e-9;

  let sumW = 0;
  let sumWX = 0;
  let sumWY = 0;
  for (const s of usable) {
    // Var(y) ≈ 2·tr(Σ²)·x²/n when noise dominates, so w = n/x² is near inverse-variance and, being data-free, keeps the fit unbiased.
    const w = s.n / Math.max(s.x * s.x, xFloor * xFloor);
    sumW += w;
    sumWX += w * s.x;
    sumWY += w * s.y;
  }
  const xMean = sumWX / sumW;
  const yMean = sumWY / sumW;
  let sxx = 0;
  let sxy = 0;
  let spread = 0;
  for (const s of usable) {
    const w = s.n / Math.max(s.x * s.x, xFloor * xFloor);
    const dx = s.x - xMean;
    sxx += w * dx * dx;
    sxy += w * dx * (s.y - yMean);
    spread = Math.max(spread, Math.abs(dx));
  }
  if (!(spread > DISTINCT_X_TOLERANCE * xMax) || !(sxx > 0)) return null;
  const traceSigma = sxy / sxx;
  return { gradSqNorm: yMean - traceSigma * xMean, traceSigma };
}

/** Number of distinct x among the scales (the levels a fit went through). */
export function countDistinctX(scales: readonly BatchScale[]): number {
  const xs = scales.filter((s) => s.n > 0).map((s) => s.x).sort((a, b) => a - b);
  const xMax = xs.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
  let count = 0;
  let last = Number.NEGATIVE_INFINITY;
  for (const x of xs) {
    if (count === 0 || x - last > DISTINCT_X_TOLERANCE * xMax) count++;
    last = x;
  }
  return count;
}
