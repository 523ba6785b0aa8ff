// A step observed at several batch scales. E|G_B|^2 = |G|^2 + tr(Σ)·x with
// x = 1/B (or 1/B − 1/N when B examples are drawn without replacement from N).

/** Mean squared norm `y` of `n` gradients each averaging over an effective 1/B of `x`. */
export interface BatchScale {
  readonly x: number;
  readonly y: number;
  readonly n: number;
}

/** Unbiased single-step estimates; either can be negative. */
export interface StepEstimate {
  readonly gradSqNorm: number;
  readonly traceSigma: number;
}
