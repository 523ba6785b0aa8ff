/** How per-step estimates are smoothed and how wide the B_simple interval is. */
export interface SmoothingOptions {
  /** EMA decay per step, in [0, 1); the effective horizon is about (1 + beta)/(1 − beta) steps. */
  readonly beta: number;
  /** Two-sided confidence of the B_simple interval, in (0, 1). */
  readonly confidence: number;
  /**
   * Relative move of the optimizer's temperature lr/B (from the regime's first
   * step) that restarts a run's smoothing, > 0; Infinity never restarts. A
   * continuous schedule (cosine decay) restarts each time it has drifted this far.
   */
  readonly temperatureTolerance: number;
}

/** What one smoother needs; temperature regimes are the per-run operator's concern. */
export type SmootherOptions = Pick<SmoothingOptions, 'beta' | 'confidence'>;

// beta 0.99: on load_digits 0.9 left ~40% median error, 0.99 ~12% (DESIGN pitfalls); to be tuned on real runs.
// Tolerance 0.2: B_simple moves as 1/T, so past a 20% move the old regime's evidence is off by about as much; much less and a slow schedule restarts too often to gather evidence.
export const DEFAULT_SMOOTHING: SmoothingOptions = Object.freeze({ beta: 0.99, confidence: 0.95, temperatureTolerance: 0.2 });

/** Throws a RangeError naming the first bad value of beta or confidence. */
export function validateSmootherOptions(options: SmootherOptions): void {
  const { beta, confidence } = options;
  if (typeof beta !== 'number' || !(beta >= 0 && beta < 1)) {
    throw new RangeError(`smoothing beta must be in [0, 1), got ${String(beta)}`);
  }
  if (typeof confidence !== 'number' || !(confidence > 0 && confidence < 1)) {
    throw new RangeError(`interval confidence must be in (0, 1), got ${String(confidence)}`);
  }
}

/** Throws a RangeError naming the first bad value. */
export function validateSmoothingOptions(options: SmoothingOptions): void {
  validateSmootherOptions(options);
  const { temperatureTolerance } = options;
  if (typeof temperatureTolerance !== 'number' || !(temperatureTolerance > 0)) {
    throw new RangeError(`temperatureTolerance must be a number > 0 (Infinity never restarts), got ${String(temperatureTolerance)}`);
  }
}
