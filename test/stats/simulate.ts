// Synthetic gradients with known G and Σ, turned into CompletedSteps exactly
// as the Python hook would report them.
import type { CompletedStep, RankStep } from '../../src/ingest/completed-step.js';
import type { LayerInfo } from '../../src/types.js';

/** Seeded xoshiro128** with Box–Muller normals: reproducible across runs and machines. */
export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;
  private spare: number | null = null;

  constructor(seed: number) {
    // splitmix32 spreads a small integer seed over the 128-bit state.
    let z = seed >>> 0;
    const next = (): number => {
      z = (z + 0x9e3779b9) >>> 0;
      let t = z;
      t = Math.imul(t ^ (t >>> 16), 0x21f0aaad);
      t = Math.imul(t ^ (t >>> 15), 0x735a2d97);
      return (t ^ (t >>> 15)) >>> 0;
    };
    this.s0 = next();
    this.s1 = next();
    this.s2 = next();
    this.s3 = next();
  }

  private nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform in (0, 1), never 0 (safe for log). */
  uniform(): number {
    return (this.nextUint32() + 0.5) / 4294967296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.uniform() * n);
  }

  gaussian(): number {
    if (this.spare !== null) {
      const s = this.spare;
      this.spare = null;
      return s;
    }
    const r = Math.sqrt(-2 * Math.log(this.uniform()));
    const theta = 2 * Math.PI * this.uniform();
    this.spare = r * Math.sin(theta);
    return r * Math.cos(theta);
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

export interface Truth {
  readonly gradSqNorm: number;
  readonly traceSigma: number;
  readonly bSimple: number;
}

export interface LayerSpec {
  readonly name: string;
  readonly numel: number;
  readonly gradSqNorm: number;
  readonly bSimple: number;
}

/** Per-example gradients, layer by layer, with the truth they were drawn around. */
export interface GradientSource {
  readonly layers: LayerInfo[];
  readonly truth: Truth;
  readonly layerTruth: Truth[];
  /** A new step: draws within one step never repeat an example. */
  beginStep(rng: Rng): void;
  /** Mean of `examples` per-example gradients, per layer. */
  drawMean(rng: Rng, examples: number): Float64Array[];
}

function sumTruth(layers: readonly Truth[]): Truth {
  const gradSqNorm = layers.reduce((s, l) => s + l.gradSqNorm, 0);
  const traceSigma = layers.reduce((s, l) => s + l.traceSigma, 0);
  return { gradSqNorm, traceSigma, bSimple: traceSigma / gradSqNorm };
}

interface GaussianLayer {
  readonly mean: Float64Array;
  readonly sd: Float64Array;
}

// G of the requested norm in a random direction; diagonal Σ with standard deviations spread over e^±1, scaled to the requested B_simple.
function gaussianLayers(rng: Rng, specs: readonly LayerSpec[]): GaussianLayer[] {
  return specs.map((spec) => {
    const mean = new Float64Array(spec.numel);
    const sd = new Float64Array(spec.numel);
    let norm2 = 0;
    let variance = 0;
    for (let j = 0; j < spec.numel; j++) {
      mean[j] = rng.gaussian();
      norm2 += mean[j]! * mean[j]!;
      sd[j] = Math.exp(2 * rng.uniform() - 1);
      variance += sd[j]! * sd[j]!;
    }
    const meanScale = spec.numel > 0 && norm2 > 0 ? Math.sqrt(spec.gradSqNorm / norm2) : 0;
    const sdScale = Math.sqrt((spec.bSimple * spec.gradSqNorm) / variance);
    for (let j = 0; j < spec.numel; j++) {
      mean[j]! *= meanScale;
      sd[j]! *= sdScale;
    }
    return { mean, sd };
  });
}

/**
 * Independent Gaussian per-example gradients N(G, Σ). With `perExample` the
 * mean is averaged from explicit examples; otherwise it is drawn directly
 * from N(G, Σ/b), the same distribution at a fraction of the cost.
 */
export function gaussianSource(rng: Rng, specs: readonly LayerSpec[], perExample = false): GradientSource {
  const layers = gaussianLayers(rng, specs);
  const layerTruth = specs.map((s) => ({ gradSqNorm: s.gradSqNorm, traceSigma: s.bSimple * s.gradSqNorm, bSimple: s.bSimple }));
  return {
    layers: specs.map((s) => ({ name: s.name, numel: s.numel, kind: 'linear' })),
    truth: sumTruth(layerTruth),
    layerTruth,
    beginStep: () => {},
    drawMean: (r, examples) =>
      layers.map(({ mean, sd }) => {
        const out = new Float64Array(mean.length);
        if (perExample) {
          for (let e = 0; e < examples; e++) for (let j = 0; j < out.length; j++) out[j]! += mean[j]! + sd[j]! * r.gaussian();
          for (let j = 0; j < out.length; j++) out[j]! /= examples;
        } else {
          const shrink = 1 / Math.sqrt(examples);
          for (let j = 0; j < out.length; j++) out[j] = mean[j]! + sd[j]! * shrink * r.gaussian();
        }
        return out;
      }),
  };
}

/**
 * A finite training set of `populationSize` examples drawn once from the
 * Gaussian model, mean exactly G; each step samples without replacement (like an
 * epoch-shuffling DataLoader). The truth is the population's own |G|² and
 * its (N−1)-normalised tr(Σ).
 */
export function finitePopulationSource(rng: Rng, specs: readonly LayerSpec[], populationSize: number): GradientSource {
  const model = gaussianLayers(rng, specs);
  // Noise centred on the population so its mean is exactly G: B_simple can then be set near (or above) N.
  const population = model.map(({ mean, sd }) => {
    const d = mean.length;
    const values = new Float64Array(populationSize * d);
    const noiseMean = new Float64Array(d);
    for (let e = 0; e < populationSize; e++) {
      for (let j = 0; j < d; j++) {
        values[e * d + j] = sd[j]! * rng.gaussian();
        noiseMean[j]! += values[e * d + j]! / populationSize;
      }
    }
    for (let e = 0; e < populationSize; e++) for (let j = 0; j < d; j++) values[e * d + j]! += mean[j]! - noiseMean[j]!;
    return values;
  });
  const layerTruth = model.map(({ mean }, l) => {
    const d = mean.length;
    const values = population[l]!;
    const popMean = new Float64Array(d);
    for (let e = 0; e < populationSize; e++) for (let j = 0; j < d; j++) popMean[j]! += values[e * d + j]! / populationSize;
    let gradSqNorm = 0;
    for (let j = 0; j < d; j++) gradSqNorm += popMean[j]! * popMean[j]!;
    let ss = 0;
    for (let e = 0; e < populationSize; e++) {
      for (let j = 0; j < d; j++) ss += (values[e * d + j]! - popMean[j]!) ** 2;
    }
    const traceSigma = ss / (populationSize - 1);
    return { gradSqNorm, traceSigma, bSimple: traceSigma / gradSqNorm };
  });
  const order = Array.from({ length: populationSize }, (_, i) => i);
  let drawn = 0;
  return {
    layers: specs.map((s) => ({ name: s.name, numel: s.numel, kind: 'linear' })),
    truth: sumTruth(layerTruth),
    layerTruth,
    beginStep: () => {
      drawn = 0;
    },
    drawMean: (r, examples) => {
      if (drawn + examples > populationSize) throw new RangeError('a step cannot draw more examples than the population holds');
      const picked: number[] = [];
      // Partial Fisher–Yates: a uniformly random subset, disjoint from this step's earlier draws.
      for (let i = 0; i < examples; i++, drawn++) {
        const swap = drawn + r.int(populationSize - drawn);
        const chosen = order[swap]!;
        order[swap] = order[drawn]!;
        order[drawn] = chosen;
        picked.push(chosen);
      }
      return model.map(({ mean }, l) => {
        const d = mean.length;
        const values = population[l]!;
        const out = new Float64Array(d);
        for (const e of picked) for (let j = 0; j < d; j++) out[j]! += values[e * d + j]!;
        for (let j = 0; j < d; j++) out[j]! /= examples;
        return out;
      });
    },
  };
}

/** How one step is split: examples per micro-batch, per rank; DDP all-reduce or not. */
export interface Layout {
  readonly name: string;
  readonly microExamples: readonly (readonly number[])[];
  readonly allReduce: boolean;
  /** The loss scale c in h_i = c·g_i; default 1/k (loss / accumulation steps). */
  readonly lossScale?: number;
}

function sqNorm(v: Float64Array): number {
  let s = 0;
  for (let j = 0; j < v.length; j++) s += v[j]! * v[j]!;
  return s;
}

/**
 * One optimizer step as the hook reports it: each micro-batch's contribution
 * h_i = c·g_i (g_i its mean gradient), |Σh_i|² as PyTorch's `.grad` holds it
 * after k backward passes, and DDP's average of the ranks' `.grad`.
 */
export function simulateStep(rng: Rng, source: GradientSource, layout: Layout, step: number): CompletedStep {
  source.beginStep(rng);
  const layerCount = source.layers.length;
  const accumulated: Float64Array[][] = [];
  const ranks = layout.microExamples.map((micro): Omit<RankStep, 'reducedSqNorms'> => {
    const c = layout.lossScale ?? 1 / micro.length;
    const grad = source.layers.map((l) => new Float64Array(l.numel));
    const microSqNorms = micro.map((b) => {
      const g = source.drawMean(rng, b);
      return g.map((layer, l) => {
        const acc = grad[l]!;
        let s = 0;
        for (let j = 0; j < layer.length; j++) {
          const h = c * layer[j]!;
          acc[j]! += h;
          s += h * h;
        }
        return s;
      });
    });
    accumulated.push(grad);
    return { rank: accumulated.length - 1, microSqNorms, microExamples: [...micro], accumulatedSqNorms: grad.map(sqNorm) };
  });
  let reduced: number[] | null = null;
  if (layout.allReduce && ranks.length > 1) {
    reduced = [];
    for (let l = 0; l < layerCount; l++) {
      const avg = new Float64Array(source.layers[l]!.numel);
      for (const grad of accumulated) for (let j = 0; j < avg.length; j++) avg[j]! += grad[l]![j]! / ranks.length;
      reduced.push(sqNorm(avg));
    }
  }
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
