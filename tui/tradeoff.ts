// The paper's steps/examples trade-off around the current batch (McCandlish et al. 2018).

export interface Candidate {
  readonly batch: number;
  /** S/S_min = 1 + B_noise/B */
  readonly steps: number;
  /** E/E_min = 1 + B/B_noise */
  readonly examples: number;
  readonly current: boolean;
  readonly knee: boolean;
  /** The policy's recommended batch (the current one while it holds). */
  readonly recommended: boolean;
}

/** Batches around the current one: always the current, the knee and the recommended batch (when given). */
export function candidates(current: number, bNoise: number, count = 5, recommended: number | null = null): Candidate[] {
  const knee = Math.max(1, Math.round(bNoise));
  const batches = new Set<number>([current, knee]);
  if (recommended !== null && recommended > 0) batches.add(recommended);
  for (const f of [0.5, 2, 0.25, 4, 8]) {
    if (batches.size >= count) break;
    const b = Math.max(1, Math.round(current * f));
    batches.add(b);
  }
  return [...batches]
    .sort((a, b) => a - b)
    .map((batch) => ({
      batch,
      steps: 1 + bNoise / batch,
      examples: 1 + batch / bNoise,
      current: batch === current,
      knee: batch === knee,
      recommended: batch === recommended,
    }));
}

/** The share of an exact gradient's progress each step makes: 1/(1 + B_simple/B). */
export const progressPerStep = (batch: number, bSimple: number): number => 1 / (1 + bSimple / batch);

/** Expected |G_est − G|²/|G|² = B_simple/B. */
export const relativeGradientError = (batch: number, bSimple: number): number => bSimple / batch;
