// `noisescope bench accuracy`: the DESIGN target "on synthetic gradients with
// known G and Σ, within 5%, with intervals that cover the truth at their nominal rate".
import { toBatchScales } from '../ingest/to-batch-scales.js';
import { RunEstimator } from '../stats/run-estimator.js';
import {
  SeededRandom,
  type SyntheticGradients,
  type SyntheticLayer,
  type SyntheticLayout,
  finiteTrainingSet,
  gaussianGradients,
  simulateSyntheticStep,
} from './synthetic-gradients.js';

export interface SyntheticAccuracyOptions {
  /** Independent runs per row (default 200). */
  readonly replicates?: number;
  /** Nominal confidence of the intervals (default 0.9). */
  readonly confidence?: number;
  readonly betas?: readonly number[];
  readonly seed?: number;
}

export interface SyntheticAccuracyRow {
  readonly layout: string;
  readonly beta: number;
  readonly steps: number;
  readonly trueBSimple: number;
  /** Median over replicates of the final smoothed B_simple. */
  readonly medianEstimate: number;
  readonly medianRelativeError: number;
  readonly p90RelativeError: number;
  /** Share of replicates whose final interval contains the truth. */
  readonly coverage: number;
  readonly confidence: number;
  readonly trusted: number;
}

// Four layers, 240 parameters (small, so hundreds of replicates stay quick): B_simple ≈ 69,
// comparable to the batch, and ≈ N/2 for the finite training set.
const LAYERS: readonly SyntheticLayer[] = [
  { name: 'embed', numel: 70, gradSqNorm: 1, bSimple: 40 },
  { name: 'hidden', numel: 60, gradSqNorm: 0.5, bSimple: 120 },
  { name: 'out', numel: 90, gradSqNorm: 1.5, bSimple: 60 },
  { name: 'bias', numel: 20, gradSqNorm: 0.2, bSimple: 150 },
];
const SET_LAYERS = LAYERS.map((l) => ({ ...l, bSimple: 2 * l.bSimple }));

interface Scenario {
  readonly layout: SyntheticLayout;
  readonly source: (random: SeededRandom) => SyntheticGradients;
}

const SCENARIOS: readonly Scenario[] = [
  { layout: { name: '4 × 16 accumulation', microExamples: [[16, 16, 16, 16]], allReduce: false }, source: (r) => gaussianGradients(r, LAYERS) },
  { layout: { name: 'unequal 4,8,16,36', microExamples: [[4, 8, 16, 36]], allReduce: false }, source: (r) => gaussianGradients(r, LAYERS) },
  {
    layout: { name: '2 ranks × 4 × 8 + all-reduce', microExamples: [[8, 8, 8, 8], [8, 8, 8, 8]], allReduce: true },
    source: (r) => gaussianGradients(r, LAYERS),
  },
  {
    layout: { name: '4 × 16 from N=256, FPC', microExamples: [[16, 16, 16, 16]], allReduce: false },
    source: (r) => finiteTrainingSet(r, SET_LAYERS, 256),
  },
  // The per-example source: batch-of-one vs the step's batch, alone and combined with accumulation and ranks.
  { layout: { name: '1 × 64 per-example', microExamples: [[64]], allReduce: false, perExample: true }, source: (r) => gaussianGradients(r, LAYERS) },
  {
    layout: { name: '4 × 16 accumulation + per-example', microExamples: [[16, 16, 16, 16]], allReduce: false, perExample: true },
    source: (r) => gaussianGradients(r, LAYERS),
  },
  {
    layout: { name: '2 ranks × 32 + all-reduce + per-example', microExamples: [[32], [32]], allReduce: true, perExample: true },
    source: (r) => gaussianGradients(r, LAYERS),
  },
  {
    layout: { name: '1 × 64 per-example from N=256, FPC', microExamples: [[64]], allReduce: false, perExample: true },
    source: (r) => finiteTrainingSet(r, SET_LAYERS, 256),
  },
];

function quantile(sorted: readonly number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
}

/** Runs every layout at every beta over independent replicates. */
export function measureSyntheticAccuracy(options: SyntheticAccuracyOptions = {}): SyntheticAccuracyRow[] {
  const replicates = options.replicates ?? 200;
  const confidence = options.confidence ?? 0.9;
  const betas = options.betas ?? [0.9, 0.99];
  const seed = options.seed ?? 1;
  const rows: SyntheticAccuracyRow[] = [];
  for (const [s, scenario] of SCENARIOS.entries()) {
    for (const beta of betas) {
      // Three smoothing horizons: the bias-corrected EMA is then within ~5% of its steady effective size.
      const steps = Math.ceil(3 / (1 - beta) - 1e-9);
      const estimates: number[] = [];
      const errors: number[] = [];
      let covered = 0;
      let trusted = 0;
      // One model (and training set) per row; replicates differ in the examples they sample.
      const source = scenario.source(new SeededRandom(seed * 1_000_003 + s));
      for (let r = 0; r < replicates; r++) {
        const random = new SeededRandom(seed * 1_000_003 + s * 10_007 + r + 1);
        const estimator = new RunEstimator(source.layers, { beta, confidence });
        let last = null;
        for (let t = 0; t < steps; t++) {
          last = estimator.update(toBatchScales(simulateSyntheticStep(random, source, scenario.layout, t), source.datasetSize));
        }
        const smoothed = last?.smoothed;
        const estimate = smoothed?.bSimple ?? Number.POSITIVE_INFINITY;
        estimates.push(estimate);
        errors.push(Math.abs(estimate - source.truth.bSimple) / source.truth.bSimple);
        if (smoothed?.interval && smoothed.interval.low <= source.truth.bSimple && source.truth.bSimple <= smoothed.interval.high) covered++;
        if (smoothed?.trusted) trusted++;
      }
      estimates.sort((a, b) => a - b);
      errors.sort((a, b) => a - b);
      rows.push({
        layout: scenario.layout.name,
        beta,
        steps,
        trueBSimple: source.truth.bSimple,
        medianEstimate: quantile(estimates, 0.5),
        medianRelativeError: quantile(errors, 0.5),
        p90RelativeError: quantile(errors, 0.9),
        coverage: covered / replicates,
        confidence,
        trusted: trusted / replicates,
      });
    }
  }
  return rows;
}

/** The accuracy benchmark as a printable table. */
export function runSyntheticAccuracy(options: SyntheticAccuracyOptions = {}): string {
  const rows = measureSyntheticAccuracy(options);
  const replicates = options.replicates ?? 200;
  const header = ['layout', 'beta', 'steps', 'true B_simple', 'estimate (median)', 'rel. error (median)', 'rel. error (p90)', 'coverage', 'trusted'];
  const pct = (v: number) => `${(100 * v).toFixed(1)}%`;
  const body = rows.map((r) => [
    r.layout,
    String(r.beta),
    String(r.steps),
    r.trueBSimple.toFixed(1),
    r.medianEstimate.toFixed(1),
    pct(r.medianRelativeError),
    pct(r.p90RelativeError),
    `${pct(r.coverage)} (nominal ${pct(r.confidence)})`,
    pct(r.trusted),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => (row[i] ?? '').length)));
  const line = (cells: readonly string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  // Binomial standard error of a coverage rate, so a reader can tell noise from miscalibration.
  const coverageSe = Math.sqrt(((options.confidence ?? 0.9) * (1 - (options.confidence ?? 0.9))) / replicates);
  return [
    `Synthetic gradients with known G and Σ: ${replicates} independent replicates per row; final smoothed estimate after 3 smoothing horizons.`,
    line(header),
    line(widths.map((w) => '-'.repeat(w))),
    ...body.map(line),
    `Coverage standard error over ${replicates} replicates: ±${pct(coverageSe)}. Target: median error within 5%, coverage at the nominal rate.`,
  ].join('\n');
}
