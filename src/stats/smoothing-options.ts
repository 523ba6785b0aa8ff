/** How per-step estimates are smoothed and how wide the B_simple interval is. */
export interface SmoothingOptions {
  /** EMA decay per step, in [0, 1); the effective horizon is about (1 + beta)/(1 − beta) steps. */
  readonly beta: number;
  /** Two-sided confidence of the B_simple interval, in (0, 1). */
  readonly confidence: number;
}

// beta 0.99: on load_digits 0.9 left ~40% median error, 0.99 ~12% (DESIGN pitfalls); to be tuned on real runs.
export const DEFAULT_SMOOTHING: SmoothingOptions = Object.freeze({ beta: 0.99, confidence: 0.95 });

/** Throws a RangeError naming the first bad value. */
export function validateSmoothingOptions(options: SmoothingOptions): void {
  const { beta, confidence } = options;
  if (typeof beta !== 'number' || !(beta >= 0 && beta < 1)) {
    throw new RangeError(`smoothing beta must be in [0, 1), got ${String(beta)}`);
  }
  if (typeof confidence !== 'number' || !(confidence > 0 && confidence < 1)) {
    throw new RangeError(`interval confidence must be in (0, 1), got ${String(confidence)}`);
  }
}
