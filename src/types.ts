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
  /**
   * Sampling spread of the smoothed |G|² and tr(Σ) (what the interval is built
   * from), for tests of "B_noise = b" such as the recommendation's confidence.
   * Absent on raw (single-step) estimates.
   */
  readonly spread?: EstimateSpread;
}

export interface EstimateSpread {
  readonly varGradSqNorm: number;
  readonly varTraceSigma: number;
  readonly covariance: number;
  /** Degrees of freedom of the Student t behind the interval. */
  readonly df: number;
}

export interface RunInfo {
  readonly run: string;
  readonly worldSize: number;
  readonly ranksConnected: number;
  readonly source: Source;
  readonly mode: 'norms' | 'dense' | 'sketch';
  /** The layers the estimate covers. */
  readonly layers: readonly LayerInfo[];
  /** Parameters in `layers` (the covered ones). */
  readonly parameters: number;
  /** Parameters the hook measures none of (the per-example source cannot cover their module); not in `layers`. */
  readonly uncoveredLayers: readonly LayerInfo[];
  /** Training-set size for the finite-population correction; null when unknown. */
  readonly datasetSize: number | null;
  readonly every: number;
  readonly startedUnixMs: number;
  readonly ended: boolean;
  /** The optimizer's class name as the hook reported it (e.g. 'SGD', 'AdamW'); null when unknown. */
  readonly optimizer: string | null;
  /** The run's own recommendation bounds from its Hello; fields it left unset are absent. */
  readonly policy: Partial<BatchPolicy>;
  /** Sketch mode: the CountSketch size of each layer (in `layers` order) and the wire dtype. */
  readonly sketch?: SketchSpec;
  /**
   * Present (true) when the hook's per-example sums are sampled estimates, not exact sums: its Hello says so
   * (watch(per_example_sample=s)), or the latest measured step's sums were sampled (per_example_sample="auto").
   */
  readonly perExampleSampled?: true;
}

export interface SketchSpec {
  /** m per layer; m = numel means the layer is sent exactly. */
  readonly sizes: readonly number[];
  readonly dtype: 'DTYPE_F32' | 'DTYPE_F16' | 'DTYPE_BF16';
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
  /** Steps that have fed the smoothed estimate so far (since the run began, across regimes). */
  readonly stepsMeasured: number;
  /** lr / global batch (the optimizer's temperature, up to a constant); null when the lr is unknown. */
  readonly temperature: number | null;
  /** The step the current smoothing regime began (the run's first measured step, or a temperature change). */
  readonly regimeStartStep: number;
  /** Set on the step where a temperature change restarted the smoothing. */
  readonly temperatureChange: TemperatureChange | null;
  /** Dense steps only: how alike each rank's micro-batch gradients were. */
  readonly diversity?: readonly GradientDiversity[];
}

/** Pairwise cosine similarity of one rank's K micro-batch gradients at one step (dense mode). */
export interface GradientDiversity {
  readonly rank: number;
  /** K. */
  readonly microBatches: number;
  /** K×K row-major, whole model; NaN where a gradient is zero. */
  readonly cosines: readonly number[];
  /** The same per layer, in the run's layer order. */
  readonly layerCosines: readonly (readonly number[])[];
  /** Per micro-batch: its mean cosine to the other K−1. */
  readonly meanCosine: readonly number[];
  /** Micro-batches whose gradient disagrees with the rest (DISAGREEMENT in src/stats/gradient-diversity.ts). */
  readonly disagreeing: readonly number[];
  /** Data-parallel dense and sketch steps: this rank's gradient against the other ranks' (the step's cross-rank Gram). */
  readonly acrossRanks?: RankAgreement;
}

/** How one rank's gradient agrees with the other ranks' at one step (rankAgreement in src/stats/gradient-diversity.ts). */
export interface RankAgreement {
  /** By rank: cosine of this rank's accumulated gradient with that rank's (1 at its own). */
  readonly cosines: readonly number[];
  /** Mean cosine of this rank's micro-batch gradients with every other rank's micro-batch gradients. */
  readonly meanCosine: number;
  /** Mean cosine among the other ranks' micro-batch gradients (pairs without this rank): what agreement looks like. */
  readonly othersCosine: number;
  /** This rank's gradient disagrees with the rest (the DISAGREEMENT rule, over ranks). */
  readonly disagrees: boolean;
}

/** The optimizer's temperature lr/B moved beyond tolerance between two measured steps of a run. */
export interface TemperatureChange {
  readonly fromLr: number;
  readonly toLr: number;
  readonly fromBatch: number;
  readonly toBatch: number;
}

/** What the recommendation aims for: balanced = the knee B = B_noise; time = 4 B_noise; compute = B_noise / 4. */
export type Objective = 'balanced' | 'time' | 'compute';

/** Bounds and preferences for batch-size recommendations (sidecar defaults, overridden per run by its Hello). */
export interface BatchPolicy {
  readonly objective: Objective;
  /** Global examples per optimizer step. */
  readonly minBatch: number;
  /** Global examples per optimizer step; Infinity = unbounded. */
  readonly maxBatch: number;
  /** Examples per device per micro-batch; null = keep the run's current micro-batch. */
  readonly maxMicroBatch: number | null;
  /** At most this factor per change (> 1). */
  readonly maxFactor: number;
  /** Consecutive measured steps the interval must exclude the current batch before a change. */
  readonly window: number;
  /** Only ever recommend larger batches (a ramp-up). */
  readonly monotone: boolean;
}

export type RecommendationAction = 'hold' | 'increase' | 'decrease';

/** A heuristic, labelled as one: how the learning rate usually scales with the batch. */
export interface LearningRateHint {
  readonly currentLr: number;
  readonly suggestedLr: number;
  readonly rule: 'linear' | 'sqrt';
  readonly note: string;
}

/** The policy's advice for one run; a new one is emitted when the action or the recommended batch changes. */
export interface Recommendation {
  readonly run: string;
  /** The measured step it was made at. */
  readonly step: number;
  /** Per run, from 1. */
  readonly sequence: number;
  readonly action: RecommendationAction;
  readonly currentGlobalBatch: number;
  readonly recommendedGlobalBatch: number;
  /** Examples per device per micro-batch, and accumulation steps per rank, that give the recommended batch. */
  readonly microBatch: number;
  readonly accumulationSteps: number;
  readonly worldSize: number;
  /** The smoothed B_simple and its interval the advice was made from. */
  readonly noiseScale: number;
  readonly interval: Interval;
  /** Objective × noise scale, before rounding, bounds and the per-change factor. */
  readonly targetBatch: number;
  readonly objective: Objective;
  /** Predicted optimizer steps / examples to reach the same loss, recommended ÷ current. */
  readonly stepsFactor: number;
  readonly examplesFactor: number;
  /** Null when the learning rate is unknown or the batch holds. */
  readonly lrHint: LearningRateHint | null;
  /** In [0, 1]: for a change, the probability (Fieller t test) that B_noise·objective lies on that side of the current batch. */
  readonly confidence: number;
  /** One sentence. */
  readonly reason: string;
  readonly unixMs: number;
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
  /** Ranks declared gone (stream ended without Goodbye, not back within the partial-step timeout), over all runs; 0 again once they rejoin. */
  readonly ranksGone: number;
  /** Events Watch calls dropped because their client did not read them (all calls ever; watchStats().dropped). */
  readonly watchEventsDropped: number;
}
