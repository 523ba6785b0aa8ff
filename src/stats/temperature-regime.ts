import type { TemperatureChange } from '../types.js';

/** The optimizer's temperature lr/B (McCandlish et al. App. C, up to a constant); null when the lr or the batch is unknown. */
export function temperatureOf(lr: number | null, globalBatch: number): number | null {
  return lr !== null && globalBatch > 0 ? lr / globalBatch : null;
}

/**
 * A run's temperature regimes. B_simple moves as 1/T, so once T has left the
 * regime's reference (its first step's T) by more than the tolerance, the
 * evidence gathered so far describes another noise scale: a new regime starts.
 * The reference stays put within a regime, so a continuous schedule (cosine
 * decay) restarts each time it has drifted the tolerance from the regime's start.
 */
export class TemperatureRegime {
  private readonly maxLogRatio: number;
  private reference: number | null = null;
  private lastLr = 0;
  private lastBatch = 0;
  private start: number | null = null;

  /** `tolerance` > 0, already validated; Infinity never restarts. */
  constructor(tolerance: number) {
    this.maxLogRatio = Math.log1p(tolerance);
  }

  /** The step the current regime began; before any step, the given one. */
  startStep(step: number): number {
    return (this.start ??= step);
  }

  /**
   * Feeds a measured (not skipped) step; the change when it starts a new
   * regime, else null. A step whose temperature is unknown neither starts nor breaks one.
   */
  observe(step: number, lr: number | null, globalBatch: number): TemperatureChange | null {
    this.start ??= step;
    const temperature = temperatureOf(lr, globalBatch);
    if (temperature === null || lr === null) return null;
    const reference = this.reference;
    const from = { lr: this.lastLr, batch: this.lastBatch };
    this.lastLr = lr;
    this.lastBatch = globalBatch;
    if (reference === null) {
      this.reference = temperature;
      return null;
    }
    // NaN (both zero) and Infinity against an infinite tolerance compare false: no restart.
    if (!(Math.abs(Math.log(temperature / reference)) > this.maxLogRatio)) return null;
    this.reference = temperature;
    this.start = step;
    return { fromLr: from.lr, toLr: lr, fromBatch: from.batch, toBatch: globalBatch };
  }
}

// Three significant digits: a cosine schedule's lr would print 17.
function short(x: number): string {
  return String(Number(x.toPrecision(3)));
}

/** "learning-rate change at step 300 (lr 0.05 → 0.005, batch 64): smoothing restarted, re-estimating". */
export function restartNote(step: number, change: TemperatureChange): string {
  const lrMoved = change.fromLr !== change.toLr;
  const batchMoved = change.fromBatch !== change.toBatch;
  const what = lrMoved && batchMoved ? 'temperature change' : batchMoved ? 'batch-size change' : 'learning-rate change';
  const lr = lrMoved ? `lr ${short(change.fromLr)} → ${short(change.toLr)}` : `lr ${short(change.toLr)}`;
  const batch = batchMoved ? `batch ${change.fromBatch} → ${change.toBatch}` : `batch ${change.toBatch}`;
  return `${what} at step ${step} (${lr}, ${batch}): smoothing restarted, re-estimating`;
}
