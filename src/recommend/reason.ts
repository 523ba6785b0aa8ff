import type { Interval, Objective, RecommendationAction } from '../types.js';
import type { BatchLimit } from './choose-batch.js';

/** Whole numbers from 10 up, two significant digits below; ∞ for an unbounded interval. */
export function formatCount(x: number): string {
  if (x === Number.POSITIVE_INFINITY) return '∞';
  if (!Number.isFinite(x)) return String(x);
  return Math.abs(x) >= 10 ? String(Math.round(x)) : String(Number(x.toPrecision(2)));
}

const percent = (factor: number): string => `${Math.round(Math.abs(1 - factor) * 100)}%`;

/** What the advice was made from: the estimate, the objective, the evidence streak. */
export interface ReasonEvidence {
  readonly noiseScale: number;
  readonly interval: Interval;
  readonly objective: Objective;
  readonly factor: number;
  readonly currentBatch: number;
  /** Consecutive measured steps the evidence has pointed this way. */
  readonly steps: number;
}

// "B_simple ≈ 212 (interval 150–320)", or scaled by the objective when it is not the knee.
function subject(e: ReasonEvidence): string {
  const range = `${formatCount(e.interval.low)}–${formatCount(e.interval.high)}`;
  if (e.factor === 1) return `B_simple ≈ ${formatCount(e.noiseScale)} (interval ${range})`;
  return `${e.factor} × B_simple ≈ ${formatCount(e.factor * e.noiseScale)} (${e.objective} objective; B_simple interval ${range})`;
}

function streak(e: ReasonEvidence, side: 'above' | 'below'): string {
  return `${subject(e)} has stayed ${side} the current batch ${formatCount(e.currentBatch)} for ${e.steps} measured steps`;
}

function limitNote(limit: BatchLimit | null, maxFactor: number, boundValue: number): string {
  switch (limit) {
    case 'max factor':
      return ` (capped at ${maxFactor}× per change)`;
    case 'max batch':
      return ` (held to max batch ${formatCount(boundValue)})`;
    case 'min batch':
      return ` (held to min batch ${formatCount(boundValue)})`;
    case 'single step':
      return ` (the granularity's next step, beyond ${maxFactor}× per change)`;
    case null:
      return '';
  }
}

export interface ChangeReason {
  readonly action: Exclude<RecommendationAction, 'hold'>;
  readonly direction: 'increase' | 'decrease';
  readonly recommendedBatch: number;
  readonly stepsFactor: number;
  readonly examplesFactor: number;
  readonly limit: BatchLimit | null;
  readonly maxFactor: number;
  /** The bound named by a 'max batch' / 'min batch' limit. */
  readonly boundValue: number;
}

/** "B_simple ≈ 212 (interval 150–320) has stayed above the current batch 64 for 10 measured steps: 128 (capped at 2× per change) cuts …" */
export function changeReason(e: ReasonEvidence, c: ChangeReason): string {
  const effect =
    c.action === 'increase'
      ? `cuts optimizer steps to the same loss by ${percent(c.stepsFactor)} for ${percent(c.examplesFactor)} more examples`
      : `cuts examples to the same loss by ${percent(c.examplesFactor)} for ${percent(c.stepsFactor)} more optimizer steps`;
  const side = c.direction === 'increase' ? 'above' : 'below';
  return `${streak(e, side)}: ${formatCount(c.recommendedBatch)}${limitNote(c.limit, c.maxFactor, c.boundValue)} ${effect}.`;
}

/** "The current batch 128 lies inside B_simple's interval 90–180." (a sentence of its own: `serve` prints it after the advice's ". ") */
export function insideReason(e: ReasonEvidence): string {
  const B = formatCount(e.currentBatch);
  if (e.factor === 1) return `The current batch ${B} lies inside B_simple's interval ${formatCount(e.interval.low)}–${formatCount(e.interval.high)}.`;
  const low = formatCount(e.factor * e.interval.low);
  const high = formatCount(e.factor * e.interval.high);
  return `The current batch ${B} lies inside ${e.factor} × B_simple's interval ${low}–${high} (${e.objective} objective).`;
}

export function monotoneReason(e: ReasonEvidence): string {
  return `${streak(e, 'below')}, but the policy only ramps up (monotone), so the batch holds.`;
}

/** The evidence points away from the current batch but no other batch the run can take is nearer the target. */
export function nearestIsCurrentReason(e: ReasonEvidence, direction: 'increase' | 'decrease', endOfRange: string | null): string {
  const side = direction === 'increase' ? 'above' : 'below';
  if (endOfRange) return `${streak(e, side)}, but the current batch is already ${endOfRange}.`;
  return `${streak(e, side)}, but the nearest batch this granularity allows is the current one.`;
}
