// Public value types of the sidecar's Observables (and of `serve --json`).

/** Where a step's second batch scale comes from. */
export type Source = 'none' | 'accumulation' | 'data-parallel' | 'per-example' | 'probe';

/** An interval for B_simple; `high` is Infinity while the data cannot bound it. */
export interface Interval {
  readonly low: number;
  readonly high: number;
}

/** |G|^2, tr(Σ) and their ratio, in the paper's terms. */
export interface Estimate {
  readonly gradSqNorm: number;
  readonly traceSigma: number;
  /** tr(Σ)/|G|^2; null while |G|^2 ≤ 0 (possible for noisy unbiased estimates). */
  readonly bSimple: number | null;
  readonly interval: Interval | null;
  /** The interval is bounded and |G|^2 is distinguishable from zero. */
  readonly trusted: boolean;
}

export interface RunInfo {
  readonly run: string;
  readonly worldSize: number;
  readonly ranksConnected: number;
  readonly source: Source;
  readonly mode: 'norms' | 'dense' | 'sketch';
  readonly layers: readonly LayerInfo[];
  readonly parameters: number;
  /** Training-set size for the finite-population correction; null when unknown. */
  readonly datasetSize: number | null;
  readonly every: number;
  readonly startedUnixMs: number;
  readonly ended: boolean;
}

export interface LayerInfo {
  readonly name: string;
  readonly numel: number;
  readonly kind: string;
}

export interface StepStats {
  readonly run: string;
  readonly step: number;
  readonly source: Source;
  /** Examples in the step over all ranks and micro-batches. */
  readonly globalBatch: number;
  readonly microBatches: number;
  readonly ranks: number;
  /** Distinct batch scales the step's estimate was fitted through. */
  readonly levels: number;
  /** This step alone: unbiased but very noisy. */
  readonly raw: Estimate | null;
  /** Numerator and denominator smoothed separately, then divided. */
  readonly smoothed: Estimate | null;
  readonly lr: number | null;
  readonly loss: number | null;
  readonly skipped: boolean;
  /** Why there is no estimate, or a caveat the user should see. */
  readonly note: string | null;
  readonly unixMs: number;
  /** Steps that have fed the smoothed estimate so far. */
  readonly stepsMeasured: number;
}

export interface LayerEstimate {
  readonly name: string;
  readonly numel: number;
  /** Smoothed, like StepStats.smoothed. */
  readonly gradSqNorm: number;
  readonly traceSigma: number;
  readonly bSimple: number | null;
}

export interface LayerStats {
  readonly run: string;
  readonly step: number;
  readonly layers: readonly LayerEstimate[];
}

export interface Health {
  readonly unixMs: number;
  readonly ranksConnected: number;
  readonly messages: number;
  readonly bytes: number;
  readonly refused: number;
  readonly stepsCompleted: number;
  readonly stepsIncomplete: number;
  readonly droppedByHooks: number;
  readonly computeBackend: string;
}
