import { defer, map, type OperatorFunction } from 'rxjs';
import type { IngestedStep } from '../ingest/ingest.js';
import { sourceOf } from '../ingest/completed-step.js';
import { toBatchScales } from '../ingest/to-batch-scales.js';
import type { LayerStats, StepStats } from '../types.js';
import { MIN_EFFECTIVE_STEPS } from './noise-scale-smoother.js';
import { RunEstimator, type SmoothingOptions } from './run-estimator.js';

export interface NoiseScaleUpdate {
  readonly stats: StepStats;
  readonly layers: LayerStats | null;
}

const NO_SECOND_SCALE =
  'one micro-batch on one rank: no second batch scale, so no estimate (use gradient accumulation or data parallelism)';
/** Why a smoothed estimate is not trusted yet, or null when it is. */
function untrustedNote(smoothed: StepStats['smoothed']): string | null {
  if (!smoothed || smoothed.trusted) return null;
  if (!smoothed.interval || smoothed.interval.high === Infinity) {
    return 'not yet: |G|² cannot be told from zero, so the interval is unbounded';
  }
  return `warming up: fewer than ${MIN_EFFECTIVE_STEPS} effective steps smoothed`;
}

interface RunState {
  readonly estimator: RunEstimator;
  measured: number;
  regimeStartStep: number | null;
  lastSmoothed: StepStats['smoothed'];
}

/**
 * Completed steps in, one StepStats (and per-layer stats) out per step.
 * Each run keeps its own estimator; an error in one run's step becomes a
 * note on that step, never an error that ends the shared stream.
 */
export function estimateNoiseScale(options: SmoothingOptions): OperatorFunction<IngestedStep, NoiseScaleUpdate> {
  return (source) =>
    defer(() => {
      const runs = new Map<string, RunState>();
      return source.pipe(
        map(({ layout, step }): NoiseScaleUpdate => {
          let state = runs.get(layout.run);
          if (!state) {
            state = { estimator: new RunEstimator(layout.layers, options), measured: 0, regimeStartStep: null, lastSmoothed: null };
            runs.set(layout.run, state);
          }
          const base = {
            run: step.run,
            step: step.step,
            globalBatch: step.globalExamples,
            microBatches: step.ranks.reduce((n, r) => n + r.microExamples.length, 0),
            ranks: step.ranks.length,
            lr: step.lr,
            loss: step.loss,
            unixMs: step.unixMs,
            temperature: step.lr !== null && step.globalExamples > 0 ? step.lr / step.globalExamples : null,
            regimeStartStep: (state.regimeStartStep ??= step.step),
            temperatureChange: null,
          };
          const source = sourceOf(step);
          const carry = (note: string, skipped: boolean): NoiseScaleUpdate => ({
            stats: {
              ...base,
              source,
              levels: 0,
              raw: null,
              smoothed: state.lastSmoothed,
              skipped,
              note,
              stepsMeasured: state.measured,
            },
            layers: null,
          });
          if (step.skipReason) return carry(`skipped: ${step.skipReason}`, true);
          try {
            const result = state.estimator.update(toBatchScales(step, layout.datasetSize));
            if (!result) return carry(NO_SECOND_SCALE, false);
            state.measured++;
            state.lastSmoothed = result.smoothed;
            return {
              stats: {
                ...base,
                source,
                levels: result.levels,
                raw: result.raw,
                smoothed: result.smoothed,
                skipped: false,
                note: untrustedNote(result.smoothed),
                stepsMeasured: state.measured,
              },
              layers: { run: step.run, step: step.step, layers: result.layers },
            };
          } catch (error) {
            return carry(`internal error estimating this step: ${(error as Error).message}`, true);
          }
        }),
      );
    });
}
