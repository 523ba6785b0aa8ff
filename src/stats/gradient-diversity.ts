// Gradient diversity from one rank's per-layer Gram matrices of its K micro-batch gradients:
// cos(g_i, g_j) = G_ij / √(G_ii·G_jj), summing the layers' Grams for the whole model.
import type { GradientDiversity, RankAgreement } from '../types.js';

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

/**
 * Ranks, from the step's cross-rank Gram over N = world·k gradients (gradient rank·k + j): rank r's mean cosine
 * to the other ranks' micro-batches (m_r) against the mean cosine among the other ranks' micro-batches (o_r),
 * flagged by the DISAGREEMENT rule. With k ≥ 2 even 2 ranks can tell which one disagrees when it is noise
 * (the healthy rank's reference is the noisy rank's own pairs, which agree about nothing, so it is not
 * flagged); a rank whose gradient is the other's negation is symmetric with 2 ranks (both are flagged), not with 3.
 */
export function rankAgreement(grams: readonly Float64Array[], world: number, k: number): RankAgreement[] {
  const n = world * k;
  const total = new Float64Array(n * n);
  for (const gram of grams) for (let q = 0; q < n * n; q++) total[q] = (total[q] as number) + (gram[q] as number);
  const cosines = cosinesOf(total, n);
  const rankOf = (g: number) => Math.floor(g / k);
  const accumulated = new Float64Array(world * world); // ⟨Σ_j h_rj, Σ_j h_sj⟩
  for (let a = 0; a < n; a++) for (let b = 0; b < n; b++) accumulated[rankOf(a) * world + rankOf(b)]! += total[a * n + b] as number;
  const rankCosines = cosinesOf(accumulated, world);
  return Array.from({ length: world }, (_, r) => {
    const meanCosine = meanOver(cosines, n, (a, b) => (rankOf(a) === r) !== (rankOf(b) === r));
    const othersCosine = meanOver(cosines, n, (a, b) => a !== b && rankOf(a) !== r && rankOf(b) !== r);
    const disagrees = othersCosine >= DISAGREEMENT.minAgreement && meanCosine < DISAGREEMENT.ratio * othersCosine;
    return { cosines: rankCosines.slice(r * world, (r + 1) * world), meanCosine, othersCosine, disagrees };
  });
}

/** "rank 1 disagrees (cos -0.70)" for each flagged rank of a data-parallel dense step; empty when none is. */
export function rankDisagreements(diversity: readonly GradientDiversity[] | undefined): string[] {
  return (diversity ?? []).flatMap((d) => (d.acrossRanks?.disagrees ? [`rank ${d.rank} disagrees (cos ${d.acrossRanks.meanCosine.toFixed(2)})`] : []));
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
