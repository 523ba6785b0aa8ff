import type { Estimate } from '../types.js';
import type { StepEstimate } from './batch-scales.js';
import { fiellerInterval } from './fieller.js';
import { studentTQuantile } from './quantiles.js';
import { type SmootherOptions, validateSmootherOptions } from './smoothing-options.js';

/** A smoother's whole state as plain numbers (JSON round-trips it exactly), for resuming a run. */
export interface SmootherSnapshot {
  readonly weightSum: number;
  readonly weightSqSum: number;
  readonly weightCubeSum: number;
  readonly gradSqNormMean: number;
  readonly traceSigmaMean: number;
  readonly gradSqNormM2: number;
  readonly traceSigmaM2: number;
  readonly crossM2: number;
  readonly steps: number;
}

/** Fewer effective steps than this and the normal approximation behind the interval is not yet believable. */
export const MIN_EFFECTIVE_STEPS = 10;

/** One step on its own: unbiased parts, a very noisy ratio, no interval. */
export function rawEstimate(e: StepEstimate): Estimate {
  return {
    gradSqNorm: e.gradSqNorm,
    traceSigma: e.traceSigma,
    bSimple: e.gradSqNorm > 0 ? e.traceSigma / e.gradSqNorm : null,
    interval: null,
    trusted: false,
  };
}

/**
 * Bias-corrected EMA of |G|² and tr(Σ), smoothed separately and then divided
 * (the mean of per-step ratios is biased). The interval for B_simple comes
 * from the EMA-weighted (co)variances of the per-step estimates, the EMA's
 * effective sample size, and Fieller's theorem with a Student t quantile.
 * While the truth drifts, both describe the truth weighted the same way as the EMA.
 */
export class NoiseScaleSmoother {
  private readonly beta: number;
  private readonly confidence: number;
  // Unnormalised weight sums Σu, Σu², Σu³ with u_s = beta^(t−s): the bias-corrected EMA is Σu·v/Σu.
  private weightSum = 0;
  private weightSqSum = 0;
  private weightCubeSum = 0;
  private gradSqNormMean = 0;
  private traceSigmaMean = 0;
  // Weighted centred second moments (West's update: no cancellation when the spread is tiny next to the mean).
  private gradSqNormM2 = 0;
  private traceSigmaM2 = 0;
  private crossM2 = 0;
  private steps = 0;
  private cachedDf = Number.NaN;
  private cachedQuantile = Number.NaN;

  constructor(options: SmootherOptions) {
    validateSmootherOptions(options);
    this.beta = options.beta;
    this.confidence = options.confidence;
  }

  /** Steps fed since construction or reset. */
  get stepsSeen(): number {
    return this.steps;
  }

  /** 1/Σw² of the normalised weights: how many independent steps the EMA is worth. */
  get effectiveSteps(): number {
    return this.steps === 0 ? 0 : (this.weightSum * this.weightSum) / this.weightSqSum;
  }

  update(e: StepEstimate): void {
    const beta = this.beta;
    this.weightSum = beta * this.weightSum + 1;
    this.weightSqSum = beta * beta * this.weightSqSum + 1;
    this.weightCubeSum = beta * beta * beta * this.weightCubeSum + 1;
    const r = 1 / this.weightSum;
    const dG = e.gradSqNorm - this.gradSqNormMean;
    const dT = e.traceSigma - this.traceSigmaMean;
    this.gradSqNormMean += r * dG;
    this.traceSigmaMean += r * dT;
    const dGAfter = e.gradSqNorm - this.gradSqNormMean;
    this.gradSqNormM2 = beta * this.gradSqNormM2 + dG * dGAfter;
    this.traceSigmaM2 = beta * this.traceSigmaM2 + dT * (e.traceSigma - this.traceSigmaMean);
    this.crossM2 = beta * this.crossM2 + dT * dGAfter;
    this.steps++;
  }

  /** Smoothed |G|² and tr(Σ) alone (cheap: no interval); null before the first step. */
  means(): StepEstimate | null {
    if (this.steps === 0) return null;
    return { gradSqNorm: this.gradSqNormMean, traceSigma: this.traceSigmaMean };
  }

  /** Smoothed |G|², tr(Σ), their ratio and its interval; null before the first step. */
  estimate(): Estimate | null {
    if (this.steps === 0) return null;
    const gradSqNorm = this.gradSqNormMean;
    const traceSigma = this.traceSigmaMean;
    const bSimple = gradSqNorm > 0 ? traceSigma / gradSqNorm : null;
    const sumW2 = this.weightSqSum / (this.weightSum * this.weightSum);
    const sumW3 = this.weightCubeSum / (this.weightSum * this.weightSum * this.weightSum);
    const bessel = 1 - sumW2;
    // One step (or beta = 0) says nothing about the spread: the interval is unbounded.
    if (!(bessel > 1e-12)) {
      return { gradSqNorm, traceSigma, bSimple, interval: { low: 0, high: Number.POSITIVE_INFINITY }, trusted: false };
    }
    // Var(weighted mean) = Σw²·σ², with σ² from the Bessel-corrected weighted variance.
    const scale = sumW2 / (this.weightSum * bessel);
    const varGradSqNorm = scale * this.gradSqNormM2;
    const varTraceSigma = scale * this.traceSigmaM2;
    const cov = scale * this.crossM2;
    // Degrees of freedom of that weighted variance, (tr A)²/tr A² for A = diag(w) − wwᵀ: about the effective steps.
    const df = (bessel * bessel) / (sumW2 - 2 * sumW3 + sumW2 * sumW2);
    const quantile = this.quantileFor(df);
    const interval = fiellerInterval(traceSigma, gradSqNorm, varTraceSigma, varGradSqNorm, cov, quantile);
    const trusted = Number.isFinite(interval.high) && this.effectiveSteps >= MIN_EFFECTIVE_STEPS;
    const spread = { varGradSqNorm, varTraceSigma, covariance: cov, df };
    return { gradSqNorm, traceSigma, bSimple, interval, trusted, spread };
  }

  // df depends on beta and the step count only and settles after a few horizons: memoise the last one.
  private quantileFor(df: number): number {
    if (df !== this.cachedDf) {
      this.cachedDf = df;
      this.cachedQuantile = studentTQuantile((1 + this.confidence) / 2, df);
    }
    return this.cachedQuantile;
  }

  snapshot(): SmootherSnapshot {
    const { weightSum, weightSqSum, weightCubeSum, gradSqNormMean, traceSigmaMean, gradSqNormM2, traceSigmaM2, crossM2, steps } = this;
    return { weightSum, weightSqSum, weightCubeSum, gradSqNormMean, traceSigmaMean, gradSqNormM2, traceSigmaM2, crossM2, steps };
  }

  /** Continues from a snapshot (of a smoother with the same options); a non-finite or negative field is refused. */
  restore(s: SmootherSnapshot): void {
    const values = [s.weightSum, s.weightSqSum, s.weightCubeSum, s.gradSqNormMean, s.traceSigmaMean, s.gradSqNormM2, s.traceSigmaM2, s.crossM2];
    if (!values.every(Number.isFinite) || !(Number.isInteger(s.steps) && s.steps >= 0) || s.weightSum < 0 || s.weightSqSum < 0 || s.weightCubeSum < 0) {
      throw new RangeError(`not a smoother snapshot: ${JSON.stringify(s)}`);
    }
    ({
      weightSum: this.weightSum,
      weightSqSum: this.weightSqSum,
      weightCubeSum: this.weightCubeSum,
      gradSqNormMean: this.gradSqNormMean,
      traceSigmaMean: this.traceSigmaMean,
      gradSqNormM2: this.gradSqNormM2,
      traceSigmaM2: this.traceSigmaM2,
      crossM2: this.crossM2,
      steps: this.steps,
    } = s);
  }

  reset(): void {
    this.weightSum = 0;
    this.weightSqSum = 0;
    this.weightCubeSum = 0;
    this.gradSqNormMean = 0;
    this.traceSigmaMean = 0;
    this.gradSqNormM2 = 0;
    this.traceSigmaM2 = 0;
    this.crossM2 = 0;
    this.steps = 0;
  }
}
