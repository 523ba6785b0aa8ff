import type { Estimate, LayerEstimate, LayerInfo } from '../types.js';
import type { BatchScale } from './batch-scales.js';
import { countDistinctX, fitBatchScales } from './fit-batch-scales.js';
import { NoiseScaleSmoother, rawEstimate, type SmootherSnapshot } from './noise-scale-smoother.js';
import { DEFAULT_SMOOTHING, type SmootherOptions, validateSmootherOptions } from './smoothing-options.js';

export { DEFAULT_SMOOTHING, type SmoothingOptions } from './smoothing-options.js';

/** One step's contribution to a run's noise-scale statistics. */
export interface RunEstimatorUpdate {
  /** This step alone, whole model. */
  readonly raw: Estimate | null;
  /** Whole model, numerator and denominator smoothed separately, with an interval. */
  readonly smoothed: Estimate | null;
  /** Distinct batch scales the step's fit went through. */
  readonly levels: number;
  /** Smoothed per layer, in the order of the constructor's layers. */
  readonly layers: LayerEstimate[];
}

/** A RunEstimator's state: the whole model's smoother and each layer's, in the constructor's layer order. */
export interface RunEstimatorSnapshot {
  readonly total: SmootherSnapshot;
  readonly layers: readonly SmootherSnapshot[];
}

// Scales of one level must share x across layers (toBatchScales guarantees it); allow rounding only.
const SAME_X_TOLERANCE = 1e-9;

/** Per-step fits and smoothing for a whole run: the model's total and each layer. */
export class RunEstimator {
  private readonly layerInfos: readonly LayerInfo[];
  private readonly total: NoiseScaleSmoother;
  private readonly perLayer: NoiseScaleSmoother[];

  constructor(layers: readonly LayerInfo[], options: SmootherOptions = DEFAULT_SMOOTHING) {
    validateSmootherOptions(options);
    this.layerInfos = layers;
    this.total = new NoiseScaleSmoother(options);
    this.perLayer = layers.map(() => new NoiseScaleSmoother(options));
  }

  /**
   * Feeds one step's batch scales ([layer][level], as from toBatchScales).
   * Null when there is nothing to estimate: fewer than two distinct batch
   * scales, or a non-finite value (which would poison the EMA for good).
   */
  update(scalesPerLayer: readonly (readonly BatchScale[])[]): RunEstimatorUpdate | null {
    if (scalesPerLayer.length === 0) return null;
    if (scalesPerLayer.length !== this.layerInfos.length) {
      throw new RangeError(`expected batch scales for ${this.layerInfos.length} layers, got ${scalesPerLayer.length}`);
    }
    const first = scalesPerLayer[0] as readonly BatchScale[];
    // |concatenation|² is the sum of the layers' squared norms, level by level.
    const totalScales = first.map((s) => ({ x: s.x, y: 0, n: s.n }));
    for (const [l, scales] of scalesPerLayer.entries()) {
      if (scales.length !== first.length) {
        throw new RangeError(`layer ${l} has ${scales.length} batch scales, layer 0 has ${first.length}`);
      }
      for (const [i, s] of scales.entries()) {
        const level = totalScales[i] as { x: number; y: number; n: number };
        if (Math.abs(s.x - level.x) > SAME_X_TOLERANCE * Math.abs(level.x) || s.n !== level.n) {
          throw new RangeError(`layer ${l}, level ${i}: batch scale (x ${s.x}, n ${s.n}) differs from layer 0's`);
        }
        level.y += s.y;
      }
    }
    if (!totalScales.every((s) => Number.isFinite(s.x) && Number.isFinite(s.y))) return null;
    const totalFit = fitBatchScales(totalScales);
    if (!totalFit) return null;

    this.total.update(totalFit);
    const layers: LayerEstimate[] = [];
    for (const [l, scales] of scalesPerLayer.entries()) {
      const smoother = this.perLayer[l] as NoiseScaleSmoother;
      // Same x and weights as the total, so the layer fits exist and sum to it.
      smoother.update(fitBatchScales(scales) as NonNullable<ReturnType<typeof fitBatchScales>>);
      const info = this.layerInfos[l] as LayerInfo;
      const m = smoother.means() as NonNullable<ReturnType<NoiseScaleSmoother['means']>>;
      layers.push({
        name: info.name,
        numel: info.numel,
        gradSqNorm: m.gradSqNorm,
        traceSigma: m.traceSigma,
        bSimple: m.gradSqNorm > 0 ? m.traceSigma / m.gradSqNorm : null,
      });
    }
    return {
      raw: rawEstimate(totalFit),
      smoothed: this.total.estimate(),
      levels: countDistinctX(totalScales),
      layers,
    };
  }

  snapshot(): RunEstimatorSnapshot {
    return { total: this.total.snapshot(), layers: this.perLayer.map((s) => s.snapshot()) };
  }

  /** Continues from a snapshot of an estimator over the same layers. */
  restore(snapshot: RunEstimatorSnapshot): void {
    if (snapshot.layers.length !== this.perLayer.length) {
      throw new RangeError(`a snapshot of ${snapshot.layers.length} layers cannot restore an estimator of ${this.perLayer.length}`);
    }
    this.total.restore(snapshot.total);
    snapshot.layers.forEach((s, l) => (this.perLayer[l] as NoiseScaleSmoother).restore(s));
  }

  reset(): void {
    this.total.reset();
    for (const s of this.perLayer) s.reset();
  }
}
