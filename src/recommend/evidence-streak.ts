import type { Estimate, Interval, StepStats } from '../types.js';

export type Direction = 'increase' | 'decrease' | 'hold';

/** A smoothed estimate the policy may act on. */
export interface UsableEstimate extends Estimate {
  readonly bSimple: number;
  readonly interval: Interval;
}

/** Usable evidence: a measured step whose smoothed estimate is trusted, positive and bounded. */
export function usableEstimate(stats: StepStats): UsableEstimate | null {
  const e = stats.smoothed;
  if (stats.skipped || !e || !e.trusted || e.bSimple === null || !e.interval) return null;
  if (!(Number.isFinite(e.bSimple) && e.bSimple > 0)) return null;
  if (!(Number.isFinite(e.interval.low) && Number.isFinite(e.interval.high) && e.interval.low >= 0)) return null;
  return e as UsableEstimate;
}

/** Which way objective × B_simple's interval points from the current batch B. */
export function directionOf(interval: Interval, factor: number, currentBatch: number): Direction {
  if (currentBatch < factor * interval.low) return 'increase';
  if (currentBatch > factor * interval.high) return 'decrease';
  return 'hold';
}

/**
 * Consecutive usable steps pointing the same way (the policy's hysteresis).
 * The streak restarts on an unusable step, on a temperature change or new
 * smoothing regime (a transient, which never counts), and when the batch moved
 * since the last usable step (that step counts as the first at the new batch).
 */
export class EvidenceStreak {
  private direction: Direction | null = null;
  private count = 0;
  private lastRegimeStart: number | null = null;
  private lastUsableBatch: number | null = null;

  /** direction null: the step is no evidence. Returns the streak length after this step (0 = none). */
  observe(stats: StepStats, direction: Direction | null): number {
    const regimeMoved = this.lastRegimeStart !== null && stats.regimeStartStep !== this.lastRegimeStart;
    this.lastRegimeStart = stats.regimeStartStep;
    // An absent temperatureChange (a producer that predates it) is no change.
    if (direction === null || (stats.temperatureChange ?? null) !== null || regimeMoved) {
      this.reset();
      return 0;
    }
    if (this.lastUsableBatch !== stats.globalBatch || direction !== this.direction) this.count = 0;
    this.lastUsableBatch = stats.globalBatch;
    this.direction = direction;
    return ++this.count;
  }

  private reset(): void {
    this.direction = null;
    this.count = 0;
  }
}
