// Synthetic per-example gradients with known |G|² and tr(Σ), turned into
// CompletedSteps exactly as the Python hook reports a step: the one simulator
// behind `noisescope bench accuracy` and the tests in test/stats.
import type { CompletedStep, RankStep } from '../ingest/completed-step.js';
import type { LayerInfo } from '../types.js';

/** Seeded xoshiro128** with polar-method normals: the benchmark is reproducible. */
export class SeededRandom {
  private readonly s = new Uint32Array(4);
  private spare = Number.NaN;

  constructor(seed: number) {
    let z = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      // splitmix32: spread a small seed over the state.
      z = (z + 0x9e3779b9) >>> 0;
      let t = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
      t = Math.imul(t ^ (t >>> 15), 0x735a2d97);
      this.s[i] = t ^ (t >>> 15);
    }
  }

  /** Uniform in (0, 1). */
  uniform(): number {
    const s = this.s;
    const x = Math.imul(s[1]!, 5);
    const result = Math.imul((x << 7) | (x >>> 25), 9) >>> 0;
    const t = s[1]! << 9;
    s[2]! ^= s[0]!;
    s[3]! ^= s[1]!;
    s[1]! ^= s[2]!;
    s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = (s[3]! << 11) | (s[3]! >>> 21);
    return (result + 0.5) / 4294967296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.uniform() * n);
  }

  /** Chi-squared with k degrees of freedom: 2·Gamma(k/2) by Marsaglia–Tsang (exact, O(1) for any k). */
  chiSquared(k: number): number {
    if (k <= 0) return 0;
    return 2 * this.gamma(k / 2);
  }

  private gamma(shape: number): number {
    // Shape below 1: Gamma(a) = Gamma(a + 1)·U^(1/a).
    if (shape < 1) return this.gamma(shape + 1) * Math.pow(this.uniform(), 1 / shape);
    const d = shape - 1 / 3;
    const c = 1 / Math.sqrt(9 * d);
    for (;;) {
      const x = this.gaussian();
      const v = (1 + c * x) ** 3;
      if (v <= 0) continue;
      if (Math.log(this.uniform()) < 0.5 * x * x + d - d * v + d * Math.log(v)) return d * v;
    }
  }

  /** Standard normal (Marsaglia's polar method: no trigonometry, two normals per accepted pair). */
  gaussian(): number {
    if (!Number.isNaN(this.spare)) {
      const g = this.spare;
      this.spare = Number.NaN;
      return g;
    }
    for (;;) {
      const u = 2 * this.uniform() - 1;
      const v = 2 * this.uniform() - 1;
      const r2 = u * u + v * v;
      if (r2 >= 1 || r2 === 0) continue;
      const scale = Math.sqrt((-2 * Math.log(r2)) / r2);
      this.spare = v * scale;
      return u * scale;
    }
  }
}

/** |G|², tr(Σ) and their ratio B_simple = tr(Σ)/|G|². */
export interface Truth {
  readonly gradSqNorm: number;
  readonly traceSigma: number;
  readonly bSimple: number;
}

/** A layer's per-example gradients: mean G of norm² gradSqNorm, diagonal Σ with tr(Σ) = bSimple·gradSqNorm. */
export interface SyntheticLayer {
  readonly name: string;
  readonly numel: number;
  readonly gradSqNorm: number;
  readonly bSimple: number;
}

/** Where a step's examples come from, and the truth they are judged against. */
export interface SyntheticGradients {
  readonly layers: readonly LayerInfo[];
  /** The whole model's truth: sums of the layers' |G|² and tr(Σ). */
  readonly truth: Truth;
  readonly layerTruth: readonly Truth[];
  /** Null for an infinite Gaussian source; N for a finite training set. */
  readonly datasetSize: number | null;
  /** A new step: draws within one step never repeat an example. */
  beginStep(): void;
  /** Mean gradient of `examples` fresh examples, per layer, drawn with `random`. */
  drawMean(random: SeededRandom, examples: number): Float64Array[];
  /** As drawMean, with Σ_e |g_e|² per layer over the same examples (what the per-example source measures). */
  drawMicroBatch(random: SeededRandom, examples: number): MicroBatchDraw;
}

/** A micro-batch's mean gradient and the sum of its examples' squared gradient norms, per layer. */
export interface MicroBatchDraw {
  readonly mean: Float64Array[];
  readonly exampleSqNormSums: Float64Array;
}

interface Model {
  readonly mean: Float64Array[];
  readonly sd: Float64Array[];
}

// G in a random direction; standard deviations spread log-uniformly over e^±1, scaled to each layer's B_simple.
function drawModel(random: SeededRandom, layers: readonly SyntheticLayer[]): Model {
  const mean: Float64Array[] = [];
  const sd: Float64Array[] = [];
  for (const layer of layers) {
    const m = new Float64Array(layer.numel);
    const s = new Float64Array(layer.numel);
    let norm2 = 0;
    let variance = 0;
    for (let j = 0; j < layer.numel; j++) {
      m[j] = random.gaussian();
      s[j] = Math.exp(2 * random.uniform() - 1);
      norm2 += m[j]! * m[j]!;
      variance += s[j]! * s[j]!;
    }
    const mScale = norm2 > 0 ? Math.sqrt(layer.gradSqNorm / norm2) : 0;
    const sScale = Math.sqrt((layer.bSimple * layer.gradSqNorm) / variance);
    for (let j = 0; j < layer.numel; j++) {
      m[j]! *= mScale;
      s[j]! *= sScale;
    }
    mean.push(m);
    sd.push(s);
  }
  return { mean, sd };
}

function sqNorm(v: Float64Array): number {
  let s = 0;
  for (let j = 0; j < v.length; j++) s += v[j]! * v[j]!;
  return s;
}

function sumTruth(layers: readonly Truth[]): Truth {
  const gradSqNorm = layers.reduce((s, l) => s + l.gradSqNorm, 0);
  const traceSigma = layers.reduce((s, l) => s + l.traceSigma, 0);
  return { gradSqNorm, traceSigma, bSimple: traceSigma / gradSqNorm };
}

function layerInfos(layers: readonly SyntheticLayer[]): LayerInfo[] {
  return layers.map((l) => ({ name: l.name, numel: l.numel, kind: 'synthetic' }));
}

export interface GaussianGradientsOptions {
  /** Average each micro-batch mean from `b` explicit examples instead of drawing it from N(G, Σ/b) (default false). */
  readonly perExample?: boolean;
}

/**
 * Independent Gaussian examples N(G, Σ) (model drawn with `random`). A
 * micro-batch mean is drawn directly from N(G, Σ/b), the same distribution
 * at a fraction of the cost, unless `perExample` asks for explicit examples.
 */
export function gaussianGradients(random: SeededRandom, layers: readonly SyntheticLayer[], options: GaussianGradientsOptions = {}): SyntheticGradients {
  const { mean, sd } = drawModel(random, layers);
  const perExample = options.perExample ?? false;
  const layerTruth = layers.map((l) => ({ gradSqNorm: l.gradSqNorm, traceSigma: l.bSimple * l.gradSqNorm, bSimple: l.bSimple }));
  return {
    layers: layerInfos(layers),
    truth: sumTruth(layerTruth),
    layerTruth,
    datasetSize: null,
    beginStep: () => {},
    drawMean: (random, examples) =>
      mean.map((m, l) => {
        const s = sd[l]!;
        const out = new Float64Array(m.length);
        if (perExample) {
          for (let e = 0; e < examples; e++) for (let j = 0; j < m.length; j++) out[j]! += m[j]! + s[j]! * random.gaussian();
          for (let j = 0; j < m.length; j++) out[j]! /= examples;
        } else {
          const shrink = 1 / Math.sqrt(examples);
          for (let j = 0; j < m.length; j++) out[j] = m[j]! + s[j]! * shrink * random.gaussian();
        }
        return out;
      }),
    drawMicroBatch: (random, examples) => {
      const sums = new Float64Array(mean.length);
      const means = mean.map((m, l) => {
        const s = sd[l]!;
        const out = new Float64Array(m.length);
        if (perExample) {
          for (let e = 0; e < examples; e++) {
            for (let j = 0; j < m.length; j++) {
              const g = m[j]! + s[j]! * random.gaussian();
              out[j]! += g / examples;
              sums[l]! += g * g;
            }
          }
        } else {
          // Per coordinate Σ_e g_e² = b·ḡ² + Σ_e (g_e − ḡ)², the second independent of ḡ and σ²·χ²(b − 1).
          const shrink = 1 / Math.sqrt(examples);
          for (let j = 0; j < m.length; j++) {
            out[j] = m[j]! + s[j]! * shrink * random.gaussian();
            sums[l]! += examples * out[j]! * out[j]! + s[j]! * s[j]! * random.chiSquared(examples - 1);
          }
        }
        return out;
      });
      return { mean: means, exampleSqNormSums: sums };
    },
  };
}

/**
 * A training set of N examples drawn once from the Gaussian model (noise
 * centred so its mean is exactly G: B_simple can be set near, or above, N),
 * sampled without replacement within a step like an epoch-shuffling
 * DataLoader; truth: its |G|² and (N−1)-normalised tr(Σ).
 */
export function finiteTrainingSet(random: SeededRandom, layers: readonly SyntheticLayer[], size: number): SyntheticGradients {
  const { mean, sd } = drawModel(random, layers);
  const layerTruth: Truth[] = [];
  const examples = mean.map((m, l) => {
    let traceSigma = 0;
    const d = m.length;
    const values = new Float64Array(size * d);
    const centre = new Float64Array(d);
    for (let e = 0; e < size; e++) {
      for (let j = 0; j < d; j++) {
        values[e * d + j] = sd[l]![j]! * random.gaussian();
        centre[j]! += values[e * d + j]! / size;
      }
    }
    for (let e = 0; e < size; e++) {
      for (let j = 0; j < d; j++) {
        const noise = values[e * d + j]! - centre[j]!;
        traceSigma += (noise * noise) / (size - 1);
        values[e * d + j] = m[j]! + noise;
      }
    }
    const gradSqNorm = sqNorm(m);
    layerTruth.push({ gradSqNorm, traceSigma, bSimple: traceSigma / gradSqNorm });
    return values;
  });
  const order = Int32Array.from({ length: size }, (_, i) => i);
  let drawn = 0;
  return {
    layers: layerInfos(layers),
    truth: sumTruth(layerTruth),
    layerTruth,
    datasetSize: size,
    beginStep: () => {
      drawn = 0;
    },
    drawMean: (random, count) => draw(random, count).mean,
    drawMicroBatch: (random, count) => draw(random, count),
  };

  function draw(random: SeededRandom, count: number): MicroBatchDraw {
    if (drawn + count > size) throw new RangeError('a step cannot draw more examples than the training set holds');
    const start = drawn;
    // Partial Fisher–Yates: disjoint from this step's earlier draws.
    for (; drawn < start + count; drawn++) {
      const swap = drawn + random.int(size - drawn);
      const chosen = order[swap]!;
      order[swap] = order[drawn]!;
      order[drawn] = chosen;
    }
    const sums = new Float64Array(examples.length);
    const means = examples.map((values, l) => {
      const d = mean[l]!.length;
      const out = new Float64Array(d);
      for (let i = start; i < drawn; i++) {
        const offset = order[i]! * d;
        for (let j = 0; j < d; j++) {
          const g = values[offset + j]!;
          out[j]! += g / count;
          sums[l]! += g * g;
        }
      }
      return out;
    });
    return { mean: means, exampleSqNormSums: sums };
  }
}

/** Examples per micro-batch, per rank, and whether DDP all-reduces. */
export interface SyntheticLayout {
  readonly name: string;
  readonly microExamples: readonly (readonly number[])[];
  readonly allReduce: boolean;
  /** The loss scale c in h_i = c·g_i; default 1/k (loss / accumulation steps). */
  readonly lossScale?: number;
  /** Report per-example sums Σ_e |h_e|² with each micro-batch, as the per-example source does (default false). */
  readonly perExample?: boolean;
}

/**
 * One optimizer step as the hook reports it: each micro-batch's contribution
 * h_i = c·g_i (g_i its mean gradient, c = 1/k unless the layout says), |Σh_i|²
 * as PyTorch's `.grad` holds it after k backward passes, and DDP's average of
 * the ranks' `.grad`. With `perExample`, example e of micro-batch i contributes
 * h_e = c·g_e/b_i (so Σ_e h_e = h_i) and Σ_e |h_e|² is reported too.
 */
export function simulateSyntheticStep(random: SeededRandom, source: SyntheticGradients, layout: SyntheticLayout, step: number): CompletedStep {
  source.beginStep();
  const grads: Float64Array[][] = [];
  const ranks = layout.microExamples.map((micro, rank): Omit<RankStep, 'reducedSqNorms'> => {
    const c = layout.lossScale ?? 1 / micro.length;
    const grad = source.layers.map((l) => new Float64Array(l.numel));
    const exampleSums: number[][] = [];
    const microSqNorms = micro.map((b) => {
      // The plain path keeps drawMean's random stream, so earlier benchmark figures reproduce.
      let means: Float64Array[];
      if (layout.perExample) {
        const drawn = source.drawMicroBatch(random, b);
        means = drawn.mean;
        exampleSums.push(Array.from(drawn.exampleSqNormSums, (sum) => ((c * c) / (b * b)) * sum));
      } else {
        means = source.drawMean(random, b);
      }
      return means.map((g, l) => {
        let s = 0;
        for (let j = 0; j < g.length; j++) {
          const h = c * g[j]!;
          grad[l]![j]! += h;
          s += h * h;
        }
        return s;
      });
    });
    grads.push(grad);
    return {
      rank,
      microSqNorms,
      microExamples: [...micro],
      accumulatedSqNorms: grad.map(sqNorm),
      microExampleSqNormSums: layout.perExample ? exampleSums : null,
    };
  });
  const reduced =
    layout.allReduce && grads.length > 1
      ? source.layers.map((_, l) => {
          const avg = new Float64Array(source.layers[l]!.numel);
          for (const g of grads) for (let j = 0; j < avg.length; j++) avg[j]! += g[l]![j]! / grads.length;
          return sqNorm(avg);
        })
      : null;
  return {
    run: 'synthetic',
    step,
    ranks: ranks.map((r) => ({ ...r, reducedSqNorms: reduced })),
    globalExamples: layout.microExamples.flat().reduce((s, b) => s + b, 0),
    lr: null,
    loss: null,
    skipReason: null,
    unixMs: 0,
  };
}
