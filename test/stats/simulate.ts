// Test-only statistics helpers. The synthetic-gradient simulator itself
// (SeededRandom, gaussianGradients, finiteTrainingSet, simulateSyntheticStep)
// is src/bench/synthetic-gradients.ts, shared with `noisescope bench accuracy`.

/** Relative error of an estimate against the truth. */
export function relativeError(estimate: number, truth: number): number {
  return Math.abs(estimate - truth) / Math.abs(truth);
}

/** Mean and standard error of a sample. */
export function meanAndStandardError(values: readonly number[]): { mean: number; standardError: number } {
  const n = values.length;
  const mean = values.reduce((s, v) => s + v, 0) / n;
  const variance = values.reduce((s, v) => s + (v - mean) ** 2, 0) / (n - 1);
  return { mean, standardError: Math.sqrt(variance / n) };
}
