// Gradient diversity from one rank's per-layer Gram matrices of its K micro-batch gradients:
// cos(g_i, g_j) = G_ij / √(G_ii·G_jj), summing the layers' Grams for the whole model.
import type { GradientDiversity } from '../types.js';

/**
 * When is one micro-batch's gradient said to disagree with the rest? With K ≥ 3, take its mean cosine
 * to the other K−1 (m_i) and the mean cosine among those others, pairs without it (o_i). It is flagged
 * when the others agree measurably (o_i ≥ minAgreement) and it agrees with them less than `ratio` as
 * much (m_i < ratio · o_i). Where the others barely agree (a noise-dominated step, B_simple ≫ b) no
 * gradient can stand out, so nothing is flagged: a heuristic, stated as one.
 */
export const DISAGREEMENT = { minAgreement: 0.1, ratio: 0.25 } as const;

export function gradientDiversity(rank: number, grams: readonly Float64Array[], k: number): GradientDiversity {
  const total = new Float64Array(k * k);
  for (const gram of grams) for (let q = 0; q < k * k; q++) total[q] = (total[q] as number) + (gram[q] as number);
  const cosines = cosinesOf(total, k);
  const meanCosine = Array.from({ length: k }, (_, i) => meanOver(cosines, k, (a, b) => a !== b && (a === i || b === i)));
  const disagreeing: number[] = [];
  if (k >= 3) {
    for (let i = 0; i < k; i++) {
      const others = meanOver(cosines, k, (a, b) => a !== b && a !== i && b !== i);
      const mine = meanCosine[i] as number;
      if (others >= DISAGREEMENT.minAgreement && mine < DISAGREEMENT.ratio * others) disagreeing.push(i);
    }
  }
  return { rank, microBatches: k, cosines, layerCosines: grams.map((g) => cosinesOf(g, k)), meanCosine, disagreeing };
}

/** K×K cosines, row-major; NaN where a gradient is zero (no direction). */
function cosinesOf(gram: Float64Array, k: number): number[] {
  const out: number[] = new Array<number>(k * k);
  for (let i = 0; i < k; i++) {
    for (let j = 0; j < k; j++) {
      const norms = Math.sqrt((gram[i * k + i] as number) * (gram[j * k + j] as number));
      out[i * k + j] = norms > 0 ? Math.min(1, Math.max(-1, (gram[i * k + j] as number) / norms)) : Number.NaN;
    }
  }
  return out;
}

/** Mean of the cosines at the ordered pairs (a, b) that `take` keeps; NaN when none. */
function meanOver(cosines: readonly number[], k: number, take: (a: number, b: number) => boolean): number {
  let sum = 0;
  let n = 0;
  for (let a = 0; a < k; a++) {
    for (let b = 0; b < k; b++) {
      if (!take(a, b)) continue;
      sum += cosines[a * k + b] as number;
      n++;
    }
  }
  return n === 0 ? Number.NaN : sum / n;
}
