import { DEFAULT_BATCH_POLICY } from '../recommend/batch-policy.js';
import { RunPolicy } from '../recommend/run-policy.js';
import type { ResumedEstimation } from '../stats/estimate-noise-scale.js';
import { NoiseScaleSmoother, type SmootherSnapshot } from '../stats/noise-scale-smoother.js';
import { RunEstimator } from '../stats/run-estimator.js';
import { DEFAULT_SMOOTHING, type SmoothingOptions } from '../stats/smoothing-options.js';
import { restartNote, TemperatureRegime } from '../stats/temperature-regime.js';
import type { BatchPolicy, LayerInfo, LayerStats, RunInfo, StepStats } from '../types.js';
import type { RunLog } from './read-run-log.js';
import type { RunLogRecord } from './schema.js';

/** What a restarted sidecar takes over from an unfinished run's log. */
export interface ResumedRun {
  readonly run: string;
  readonly path: string;
  /** The last step the log holds: later steps continue from here, earlier ones are never logged again. */
  readonly lastStep: number;
  readonly stepsMeasured: number;
  readonly lastStats: StepStats;
  /** The policy fed every logged step again (its evidence, last advice and sequence), ready for the next. */
  readonly policy: RunPolicy;
  /** "resumed run X from <log> at step N". */
  readonly message: string;
  /** The estimation state for the run's layers (null when they differ from the logged run's: it starts afresh). */
  estimation(layers: readonly LayerInfo[]): ResumedEstimation | null;
}

/**
 * Rebuilds an unfinished run's state from its log, or null when there is
 * nothing to resume (no step since the log's last run-ended record).
 *
 * The whole model's smoothing is replayed exactly: each logged step's raw
 * estimate is what its smoother was fed (JSON round-trips doubles), and the
 * temperature regimes restart at the same steps. The policy is replayed from
 * the same step records. Per-layer means come from the last layers record of
 * the current regime (written every few steps), so they may lag by that many steps.
 * A step not after the one before it begins the run anew (a new training under the
 * same name appended to the log): only the last such stretch is resumed.
 */
export function resumeRunFromLog(
  log: RunLog,
  smoothing: SmoothingOptions = DEFAULT_SMOOTHING,
  policyDefaults: BatchPolicy = DEFAULT_BATCH_POLICY,
): ResumedRun | null {
  const replay = new RunLogReplay(smoothing, policyDefaults);
  for (const record of log.records) replay.add(record);
  return replay.resumed(log.path);
}

/** resumeRunFromLog one record at a time, so a log of any size is replayed without holding it. */
export class RunLogReplay {
  private total!: NoiseScaleSmoother;
  private regime!: TemperatureRegime;
  private policy!: RunPolicy;
  private info: RunInfo | undefined;
  private last: StepStats | null = null;
  private lastLayers: LayerStats | null = null;
  private restarted: string | null = null;

  constructor(
    private readonly smoothing: SmoothingOptions = DEFAULT_SMOOTHING,
    private readonly policyDefaults: BatchPolicy = DEFAULT_BATCH_POLICY,
  ) {
    this.begin();
  }

  /** Forgets everything: the run ended, or began anew. */
  private begin(): void {
    this.total = new NoiseScaleSmoother(this.smoothing);
    this.regime = new TemperatureRegime(this.smoothing.temperatureTolerance);
    this.policy = new RunPolicy(this.policyDefaults);
    this.restarted = null;
  }

  add(record: RunLogRecord): void {
    if (record.type === 'run-ended') {
      this.begin();
      this.info = undefined;
      this.last = null;
      this.lastLayers = null;
      return;
    }
    if (record.type === 'run') this.info = record.info;
    else if (record.type === 'layers') this.lastLayers = record.layers;
    if (record.type !== 'step') return;
    const stats = record.stats;
    if (this.last !== null && stats.step <= this.last.step) {
      // The run began anew: what came before describes another training.
      this.begin();
      if (this.lastLayers !== null && this.lastLayers.step >= stats.step) this.lastLayers = null;
    }
    this.regime.startStep(stats.step);
    if (!stats.skipped) {
      const change = this.regime.observe(stats.step, stats.lr, stats.globalBatch);
      if (change) {
        this.total.reset();
        this.restarted = restartNote(stats.step, change);
      }
    }
    if (stats.raw) {
      this.total.update(stats.raw);
      if (stats.smoothed?.trusted) this.restarted = null;
    }
    try {
      this.policy.observe(stats, this.info);
    } catch {
      // The live policy swallows a step it cannot digest (recommendBatchSize): so does its replay.
    }
    this.last = stats;
  }

  /** What a restarted sidecar takes over, from the records added so far (read from `path`). */
  resumed(path: string): ResumedRun | null {
    const lastStats = this.last;
    if (lastStats === null) return null;
    const { total, regime, policy, restarted, info, lastLayers, smoothing } = this;
    const run = lastStats.run;
    const message = `resumed run ${run} from ${path} at step ${lastStats.step}`;
    return {
      run,
      path,
      lastStep: lastStats.step,
      stepsMeasured: lastStats.stepsMeasured,
      lastStats,
      policy,
      message,
      estimation: (layers) => {
        const loggedLayers = info?.layers;
        if (loggedLayers && !sameLayers(loggedLayers, layers)) return null;
        const totalState = total.snapshot();
        const current = lastLayers !== null && lastLayers.step >= lastStats.regimeStartStep && sameNames(lastLayers, layers) ? lastLayers : null;
        const estimator = new RunEstimator(layers, smoothing);
        estimator.restore({
          total: totalState,
          layers: layers.map((_, l) => layerSnapshot(totalState, current?.layers[l] ?? null)),
        });
        return {
          estimator,
          regime,
          measured: lastStats.stepsMeasured,
          lastSmoothed: lastStats.smoothed,
          restarted,
          lastStep: lastStats.step,
          note: message,
        };
      },
    };
  }
}

/** A layer's smoother as of the total's weights with the logged layer means (its spread is not logged, and the layers' means never use it). */
function layerSnapshot(total: SmootherSnapshot, layer: { gradSqNorm: number; traceSigma: number } | null): SmootherSnapshot {
  if (layer === null || total.steps === 0) {
    return { weightSum: 0, weightSqSum: 0, weightCubeSum: 0, gradSqNormMean: 0, traceSigmaMean: 0, gradSqNormM2: 0, traceSigmaM2: 0, crossM2: 0, steps: 0 };
  }
  return { ...total, gradSqNormMean: layer.gradSqNorm, traceSigmaMean: layer.traceSigma, gradSqNormM2: 0, traceSigmaM2: 0, crossM2: 0 };
}

function sameLayers(a: readonly LayerInfo[], b: readonly LayerInfo[]): boolean {
  return a.length === b.length && a.every((l, i) => l.name === b[i]?.name && l.numel === b[i]?.numel);
}

function sameNames(logged: LayerStats, layers: readonly LayerInfo[]): boolean {
  return logged.layers.length === layers.length && logged.layers.every((l, i) => l.name === layers[i]?.name);
}
