import { defer, filter, map, type OperatorFunction } from 'rxjs';
import type { IngestedStep } from '../ingest/ingest.js';
import { sourceOf, type CompletedStep } from '../ingest/completed-step.js';
import { toBatchScales } from '../ingest/to-batch-scales.js';
import type { GradientDiversity, LayerInfo, LayerStats, StepStats, TemperatureChange } from '../types.js';
import { MIN_EFFECTIVE_STEPS } from './noise-scale-smoother.js';
import { RunEstimator } from './run-estimator.js';
import { type SmoothingOptions, validateSmoothingOptions } from './smoothing-options.js';
import { restartNote, TemperatureRegime, temperatureOf } from './temperature-regime.js';

/** Dense steps carry each rank's gradient diversity; norms steps leave the field out (null). */
function diversityOf(step: CompletedStep): readonly GradientDiversity[] | null {
  const diversity = step.ranks.flatMap((r) => (r.diversity ? [r.diversity] : []));
  return diversity.length > 0 ? diversity : null;
}

/** StepStats' fields that follow the step's own (their order is the --json line's and the run log's). */
type EstimateFields = Pick<StepStats, 'source' | 'levels' | 'raw' | 'smoothed' | 'skipped' | 'note' | 'stepsMeasured'>;

export interface NoiseScaleUpdate {
  readonly stats: StepStats;
  readonly layers: LayerStats | null;
}

const NO_SECOND_SCALE =
  'one micro-batch on one rank: no second batch scale, so no estimate (measure per-example norms: watch(..., source="per-example") or "auto"; or use gradient accumulation or data parallelism)';
/** Why a smoothed estimate is not trusted yet, or null when it is. */
function untrustedNote(smoothed: StepStats['smoothed']): string | null {
  if (!smoothed || smoothed.trusted) return null;
  if (!smoothed.interval || smoothed.interval.high === Infinity) {
    return 'not yet: |G|² cannot be told from zero, so the interval is unbounded';
  }
  return `warming up: fewer than ${MIN_EFFECTIVE_STEPS} effective steps smoothed`;
}

/** A run's estimation state rebuilt from elsewhere (its run log), taken over when the run's first step arrives. */
export interface ResumedEstimation {
  readonly estimator: RunEstimator;
  readonly regime: TemperatureRegime;
  readonly measured: number;
  readonly lastSmoothed: StepStats['smoothed'];
  readonly restarted: string | null;
  /** Steps up to this one were already estimated: they are dropped, never counted twice. */
  readonly lastStep: number;
  /** Put on the first step after resuming ("resumed run X from <log> at step N"). */
  readonly note: string;
}

/** Looks up a run's resumed state once, when the run's first step (`firstStep`) arrives; null starts it afresh. */
export type ResumeEstimation = (run: string, layers: readonly LayerInfo[], firstStep: number) => ResumedEstimation | null;

function withNote(first: string | null, note: string | null): string | null {
  return first === null ? note : note === null ? first : `${first}; ${note}`;
}

/** A resume that fails starts the run afresh: it must never cost the run its estimates. */
function resumeSafely(resume: ResumeEstimation | undefined, run: string, layers: readonly LayerInfo[], firstStep: number): ResumedEstimation | null {
  try {
    return resume?.(run, layers, firstStep) ?? null;
  } catch {
    return null;
  }
}

interface RunState {
  readonly estimator: RunEstimator;
  readonly regime: TemperatureRegime;
  measured: number;
  lastSmoothed: StepStats['smoothed'];
  /** Says why the estimate is re-estimating, until the regime a temperature change began is first trusted. */
  restarted: string | null;
  /** Set while resumed: steps up to lastStep are dropped, and the next one carries the note. */
  resumed: { lastStep: number; note: string | null } | null;
}

/**
 * Completed steps in, one StepStats (and per-layer stats) out per step.
 * Each run keeps its own estimator, restarted whenever the optimizer's
 * temperature lr/B leaves its regime's by more than `temperatureTolerance`
 * (so two noise scales are never mixed); an error in one run's step becomes a
 * note on that step, never an error that ends the shared stream.
 */
export function estimateNoiseScale(options: SmoothingOptions, resume?: ResumeEstimation): OperatorFunction<IngestedStep, NoiseScaleUpdate> {
  validateSmoothingOptions(options);
  return (source) =>
    defer(() => {
      const runs = new Map<string, RunState>();
      return source.pipe(
        map(({ layout, step }): NoiseScaleUpdate | null => {
          let state = runs.get(layout.run);
          if (!state) {
            const resumed = resumeSafely(resume, layout.run, layout.layers, step.step);
            state = resumed ? { ...resumed, resumed: { lastStep: resumed.lastStep, note: resumed.note } } : {
              estimator: new RunEstimator(layout.layers, options),
              regime: new TemperatureRegime(options.temperatureTolerance),
              measured: 0,
              lastSmoothed: null,
              restarted: null,
              resumed: null,
            };
            runs.set(layout.run, state);
          }
          if (state.resumed && step.step <= state.resumed.lastStep) return null; // estimated before the restart
          const resumeNote = state.resumed?.note ?? null;
          if (state.resumed) state.resumed.note = null;
          let temperatureChange: TemperatureChange | null = null;
          if (!step.skipReason) {
            temperatureChange = state.regime.observe(step.step, step.lr, step.globalExamples);
            if (temperatureChange) {
              state.estimator.reset();
              state.lastSmoothed = null;
              state.restarted = restartNote(step.step, temperatureChange);
            }
          }
          // Built in place, not by object spreads: spreading cost ~30× as much, and this runs every step.
          const base: { -readonly [K in Exclude<keyof StepStats, keyof EstimateFields | 'diversity'>]: StepStats[K] } & { diversity?: readonly GradientDiversity[] } = {
            run: step.run,
            step: step.step,
            globalBatch: step.globalExamples,
            microBatches: step.ranks.reduce((n, r) => n + r.microExamples.length, 0),
            ranks: step.ranks.length,
            lr: step.lr,
            loss: step.loss,
            unixMs: step.unixMs,
            temperature: temperatureOf(step.lr, step.globalExamples),
            regimeStartStep: state.regime.startStep(step.step),
            temperatureChange,
          };
          const diversity = diversityOf(step);
          if (diversity) base.diversity = diversity;
          const withEstimate = (fields: EstimateFields): StepStats => Object.assign(base, fields);
          const source = sourceOf(step);
          const carry = (note: string, skipped: boolean): NoiseScaleUpdate => ({
            stats: withEstimate({
              source,
              levels: 0,
              raw: null,
              smoothed: state.lastSmoothed,
              skipped,
              note: withNote(resumeNote, note),
              stepsMeasured: state.measured,
            }),
            layers: null,
          });
          if (step.skipReason) return carry(`skipped: ${step.skipReason}`, true);
          try {
            const result = state.estimator.update(toBatchScales(step, layout.datasetSize));
            if (!result) return carry(NO_SECOND_SCALE, false);
            state.measured++;
            state.lastSmoothed = result.smoothed;
            if (result.smoothed?.trusted) state.restarted = null;
            return {
              stats: withEstimate({
                source,
                levels: result.levels,
                raw: result.raw,
                smoothed: result.smoothed,
                skipped: false,
                note: withNote(resumeNote, state.restarted ?? untrustedNote(result.smoothed)),
                stepsMeasured: state.measured,
              }),
              layers: { run: step.run, step: step.step, layers: result.layers },
            };
          } catch (error) {
            return carry(`internal error estimating this step: ${(error as Error).message}`, true);
          }
        }),
        filter((u): u is NoiseScaleUpdate => u !== null),
      );
    });
}
