import type { BatchScale } from '../stats/batch-scales.js';
import type { CompletedStep } from './completed-step.js';

// Contributions h_i = c·g_i share one scale c (the user's loss scaling, e.g.
// 1/accumulationSteps). Everything is put in the units of the gradient the
// optimizer steps with, Σh_i = c·k·mean(g_i): micro-batch i's gradient is k·h_i
// and the accumulated one Σh_i as it is. With c = 1/k (loss/k) that is exactly
// the mean-loss gradient; any other c scales |G|² and tr(Σ) alike (B_simple is unchanged).
// For unequal micro-batches that mean has variance S²·((1/k²)·Σ 1/b_i − 1/N)
// (disjoint draws without replacement), which is the x used below.
// Per-example contributions h_e sum to their micro-batch's h_i = c·g_i; with a
// mean loss over the b_i examples h_e = c·g_e/b_i, so one example's gradient in
// the optimizer's units is k·b_i·h_e (B_r·h_e for equal micro-batches of a rank
// of B_r examples), a batch of one: x = 1 − 1/N.

/**
 * The batch scales of one step, per layer: single examples (per-example
 * source), micro-batches, each rank's accumulated gradient, and the
 * all-reduced gradient, where each exists with a distinct x. `datasetSize` (N) applies the finite-population correction.
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
      for (let l = 0; l < layerCount; l++) microY[l]! += k * k * (norms[l] as number);
    }
    accX += sumInvB / (k * k) - invN;
    for (let l = 0; l < layerCount; l++) accY[l]! += rank.accumulatedSqNorms[l] as number;
  }
  const rankCount = step.ranks.length;
  const perExample = perExampleScale(step, invN, layerCount);
  if (perExample) for (let l = 0; l < layerCount; l++) perLayer[l]!.push(perExample[l]!);
  const hasMicro = step.ranks.some((r) => r.microExamples.length > 1);
  if (hasMicro) {
    for (let l = 0; l < layerCount; l++) {
      perLayer[l]!.push({ x: microX / microCount, y: microY[l]! / microCount, n: microCount });
    }
  }
  for (let l = 0; l < layerCount; l++) {
    perLayer[l]!.push({ x: accX / rankCount, y: accY[l]! / rankCount, n: rankCount });
  }
  // All-reduced scale: DDP averages the ranks' accumulated sums Σh_i, which
  // are already in the optimizer's units, so the reduced norm is used as it is.
  const reduced = reducedSqNorms(step);
  if (rankCount > 1 && reduced) {
    const x = accX / (rankCount * rankCount) + invN / rankCount - invN;
    for (let l = 0; l < layerCount; l++) perLayer[l]!.push({ x, y: reduced[l] as number, n: 1 });
  }
  return perLayer;
}

/** Every example of every rank as a batch of one, per layer; null when the step has no per-example sums. */
function perExampleScale(step: CompletedStep, invN: number, layerCount: number): BatchScale[] | null {
  if (!step.ranks.every((r) => r.microExampleSqNormSums !== null)) return null;
  const y = new Float64Array(layerCount);
  let examples = 0;
  for (const rank of step.ranks) {
    const k = rank.microExamples.length;
    for (let i = 0; i < k; i++) {
      const b = rank.microExamples[i] as number;
      const scale = (k * b) ** 2;
      const sums = rank.microExampleSqNormSums?.[i] as readonly number[];
      for (let l = 0; l < layerCount; l++) y[l]! += scale * (sums[l] as number);
      examples += b;
    }
  }
  return Array.from(y, (sum) => ({ x: 1 - invN, y: sum / examples, n: examples }));
}

/**
 * |the reduced gradient|² per layer: as DDP's ranks send it (each the whole), or, for FSDP's
 * shards (reduce-scatter: disjoint slices of the same average), the sum over every rank's shard.
 */
function reducedSqNorms(step: CompletedStep): readonly number[] | null {
  const first = step.ranks[0];
  if (!first?.reducedSqNorms) return null;
  if (!first.reducedIsShard) return first.reducedSqNorms;
  const sum = new Array<number>(first.reducedSqNorms.length).fill(0);
  for (const rank of step.ranks) {
    if (!rank.reducedIsShard || !rank.reducedSqNorms) return null;  // the assembler excludes such steps
    rank.reducedSqNorms.forEach((v, l) => { sum[l] = (sum[l] as number) + v; });
  }
  return sum;
}
