// Scripted StepStats for the policy tests: a run whose batch the test controls
// and whose smoothed noise-scale estimate follows a given trajectory.
import { fiellerInterval } from '../../src/stats/fieller.js';
import { studentTQuantile } from '../../src/stats/quantiles.js';
import { DEFAULT_BATCH_POLICY } from '../../src/recommend/batch-policy.js';
import { RunPolicy } from '../../src/recommend/run-policy.js';
import type { BatchPolicy, Estimate, Interval, Recommendation, RunInfo, StepStats, TemperatureChange } from '../../src/types.js';

export function runInfo(overrides: Partial<RunInfo> = {}): RunInfo {
  return {
    run: 'r',
    worldSize: 1,
    ranksConnected: 1,
    source: 'accumulation',
    mode: 'norms',
    layers: [],
    uncoveredLayers: [],
    parameters: 1000,
    datasetSize: null,
    every: 1,
    startedUnixMs: 0,
    ended: false,
    optimizer: 'SGD',
    policy: {},
    ...overrides,
  };
}

/**
 * A smoothed estimate with |G|² = 1 and tr(Σ) = bSimple, each with relative
 * standard deviation `relSd`, and its 95% Fieller interval — the same
 * construction the stats code uses. `spread: false` drops the spread (the
 * confidence falls back to the interval); `interval` replaces the Fieller one.
 */
export function estimate(bSimple: number, opts: { relSd?: number; df?: number; spread?: boolean; interval?: Interval } = {}): Estimate {
  const relSd = opts.relSd ?? 0.05;
  const df = opts.df ?? 30;
  const gradSqNorm = 1;
  const traceSigma = bSimple;
  const varGradSqNorm = (relSd * gradSqNorm) ** 2;
  const varTraceSigma = (relSd * traceSigma) ** 2;
  const interval = opts.interval ?? fiellerInterval(traceSigma, gradSqNorm, varTraceSigma, varGradSqNorm, 0, studentTQuantile(0.975, df));
  const base = { gradSqNorm, traceSigma, bSimple, interval, trusted: Number.isFinite(interval.high) };
  return opts.spread === false ? base : { ...base, spread: { varGradSqNorm, varTraceSigma, covariance: 0, df } };
}

export interface StepSpec {
  readonly run?: string;
  readonly step: number;
  readonly microBatch: number;
  readonly accumulationSteps: number;
  readonly ranks?: number;
  readonly smoothed: Estimate | null;
  readonly lr?: number | null;
  readonly skipped?: boolean;
  readonly regimeStartStep?: number;
  readonly temperatureChange?: TemperatureChange | null;
  /** Default: data-parallel with ranks, else accumulation. */
  readonly source?: StepStats['source'];
}

export function stepStats(s: StepSpec): StepStats {
  const ranks = s.ranks ?? 1;
  const microBatches = s.accumulationSteps * ranks;
  const globalBatch = s.microBatch * microBatches;
  const lr = s.lr === undefined ? 0.1 : s.lr;
  return {
    run: s.run ?? 'r',
    step: s.step,
    source: s.source ?? (ranks > 1 ? 'data-parallel' : 'accumulation'),
    globalBatch,
    microBatches,
    ranks,
    levels: 2,
    raw: null,
    smoothed: s.smoothed,
    lr,
    loss: 1,
    skipped: s.skipped ?? false,
    note: null,
    unixMs: 1_000 + s.step,
    stepsMeasured: s.step,
    temperature: lr === null ? null : lr / globalBatch,
    regimeStartStep: s.regimeStartStep ?? 0,
    temperatureChange: s.temperatureChange ?? null,
  };
}

/** A run the test drives step by step, optionally applying each change as the hook would. */
export class ScriptedRun {
  readonly recommendations: Recommendation[] = [];
  /** The global batch at each step fed. */
  readonly batches: number[] = [];
  step = 0;
  microBatch: number;
  accumulationSteps: number;
  readonly policy: RunPolicy;

  constructor(
    readonly run: RunInfo,
    shape: { microBatch: number; accumulationSteps: number },
    private readonly apply = true,
    defaults: BatchPolicy = DEFAULT_BATCH_POLICY,
  ) {
    this.microBatch = shape.microBatch;
    this.accumulationSteps = shape.accumulationSteps;
    this.policy = new RunPolicy(defaults, () => 42);
  }

  get globalBatch(): number {
    return this.microBatch * this.accumulationSteps * this.run.worldSize;
  }

  /** Feeds one step; returns the recommendation it produced, if any. */
  feed(smoothed: Estimate | null, extra: Partial<StepSpec> = {}): Recommendation | null {
    this.step++;
    this.batches.push(this.globalBatch);
    const stats = stepStats({
      run: this.run.run,
      step: this.step,
      microBatch: this.microBatch,
      accumulationSteps: this.accumulationSteps,
      ranks: this.run.worldSize,
      smoothed,
      ...extra,
    });
    const rec = this.policy.observe(stats, this.run);
    if (rec) {
      this.recommendations.push(rec);
      if (this.apply && rec.action !== 'hold') {
        this.microBatch = rec.microBatch;
        this.accumulationSteps = rec.accumulationSteps;
      }
    }
    return rec;
  }

  /** Feeds `steps` steps whose B_simple is trajectory(i), i from 0. */
  follow(steps: number, trajectory: (i: number) => number, opts: Parameters<typeof estimate>[1] = {}): void {
    for (let i = 0; i < steps; i++) this.feed(estimate(trajectory(i), opts));
  }
}

/** Deterministic standard normals (Box–Muller over a 32-bit LCG). */
export function seededNormals(seed: number): () => number {
  let state = seed >>> 0;
  const uniform = () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return (state + 0.5) / 2 ** 32;
  };
  return () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
}
