import type { BatchScale } from '../stats/batch-scales.js';
import type { CompletedStep } from './completed-step.js';

// Contributions h_i = c·g_i share one scale c (the user's loss scaling, e.g.
// 1/accumulationSteps), so the accumulated gradient is read as the plain mean
// (1/k)·Σh_i; any common c² cancels in B_simple = tr(Σ)/|G|².
// For unequal micro-batches that mean has variance S²·((1/k²)·Σ 1/b_i − 1/N)
// (disjoint draws without replacement), which is the x used below.

/**
 * The batch scales of one step, per layer: micro-batches, each rank's
 * accumulated gradient, and the all-reduced gradient, where each exists with
 * a distinct x. `datasetSize` (N) applies the finite-population correction.
 */
export function toBatchScales(step: CompletedStep, datasetSize: number | null): BatchScale[][] {
  const invN = datasetSize && datasetSize > 0 ? 1 / datasetSize : 0;
  const layerCount = step.ranks[0]?.accumulatedSqNorms.length ?? 0;
  const perLayer: BatchScale[][] = Array.from({ length: layerCount }, () => []);

  // Micro-batch scale: every micro-batch of every rank.
  let microX = 0;
  let microCount = 0;
  const microY = new Float64Array(layerCount);
  // Rank-local accumulated scale.
  let accX = 0;
  const accY = new Float64Array(layerCount);
  for (const rank of step.ranks) {
    const k = rank.microExamples.length;
    let sumInvB = 0;
    for (let i = 0; i < k; i++) {
      const invB = 1 / (rank.microExamples[i] as number);
      sumInvB += invB;
      microX += invB - invN;
      microCount++;
      const norms = rank.microSqNorms[i] as readonly number[];
      for (let l = 0; l < layerCount; l++) microY[l]! += norms[l] as number;
    }
    accX += sumInvB / (k * k) - invN;
    for (let l = 0; l < layerCount; l++) accY[l]! += (rank.accumulatedSqNorms[l] as number) / (k * k);
  }
  const rankCount = step.ranks.length;
  const hasMicro = step.ranks.some((r) => r.microExamples.length > 1);
  if (hasMicro) {
    for (let l = 0; l < layerCount; l++) {
      perLayer[l]!.push({ x: microX / microCount, y: microY[l]! / microCount, n: microCount });
    }
  }
  for (let l = 0; l < layerCount; l++) {
    perLayer[l]!.push({ x: accX / rankCount, y: accY[l]! / rankCount, n: rankCount });
  }
  // All-reduced scale: DDP averages the ranks' accumulated sums, so with k
  // micro-batches on every rank reduced/k is the mean of all contributions.
  const reduced = step.ranks[0]?.reducedSqNorms;
  const k = step.ranks[0]?.microExamples.length ?? 1;
  if (rankCount > 1 && reduced) {
    const x = accX / (rankCount * rankCount) + invN / rankCount - invN;
    for (let l = 0; l < layerCount; l++) perLayer[l]!.push({ x, y: (reduced[l] as number) / (k * k), n: 1 });
  }
  return perLayer;
}
