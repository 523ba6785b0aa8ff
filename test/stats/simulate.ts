// Test-only statistics helpers. The synthetic-gradient simulator itself
// (SeededRandom, gaussianGradients, finiteTrainingSet, simulateSyntheticStep)
// is src/bench/synthetic-gradients.ts, shared with `noisescope bench accuracy`.
import { type SeededRandom, type SyntheticGradients, type SyntheticLayout, simulateSyntheticStep } from '../../src/bench/synthetic-gradients.js';
import { toBatchScales } from '../../src/ingest/to-batch-scales.js';
import { fitBatchScales } from '../../src/stats/fit-batch-scales.js';

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

/** Whole-model raw (single-step) |G|² and tr(Σ) over `steps` simulated steps: their means and standard errors. */
export function rawSteps(rng: SeededRandom, source: SyntheticGradients, layout: SyntheticLayout, steps: number, datasetSize: number | null) {
  const gradSqNorm: number[] = [];
  const traceSigma: number[] = [];
  for (let s = 0; s < steps; s++) {
    const fits = toBatchScales(simulateSyntheticStep(rng, source, layout, s), datasetSize).map((l) => fitBatchScales(l)!);
    gradSqNorm.push(fits.reduce((a, f) => a + f.gradSqNorm, 0));
    traceSigma.push(fits.reduce((a, f) => a + f.traceSigma, 0));
  }
  return { gradSqNorm: meanAndStandardError(gradSqNorm), traceSigma: meanAndStandardError(traceSigma) };
}
