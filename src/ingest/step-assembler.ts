import type { ReductionBackend } from '../compute/reduction-backend.js';
import { NoiseScopeError } from '../errors.js';
import { WIRE_DTYPE_BYTES, type AlignedPayloads, type WireDtype } from '../transport/aligned-copy.js';
import type { DenseChunk__Output } from '../transport/generated/noisescope/v1/DenseChunk.js';
import type { GradientShard__Output } from '../transport/generated/noisescope/v1/GradientShard.js';
import type { StepEnd__Output } from '../transport/generated/noisescope/v1/StepEnd.js';
import type { CompletedStep, RankStep } from './completed-step.js';
import { CrossRankSteps, type RankDenseStep } from './cross-rank-step.js';
import { DenseRankStep, type ByteBudget, type DenseStepFigures } from './dense-rank-step.js';
import type { RunLayout } from './run-layout.js';
import { DEFAULT_LIMITS, limitExceeded, limitHint, type SidecarLimits } from '../transport/limits.js';

/** What one run's assembler bounds (startSidecar's limits): open steps and steps waiting for ranks give up their oldest. */
export type StepLimits = Pick<SidecarLimits, 'openStepsPerRank' | 'pendingSteps' | 'microBatchesPerStep'>;

/** The default bounds (DEFAULT_LIMITS), by their older names. */
export const STEP_LIMITS = {
  openStepsPerRank: DEFAULT_LIMITS.openStepsPerRank,
  pendingSteps: DEFAULT_LIMITS.pendingSteps,
  microBatches: DEFAULT_LIMITS.microBatchesPerStep,
} as const;

/** The limits whose hit gives a step up (rather than refusing a message). */
export type EvictingLimit = 'openStepsPerRank' | 'pendingSteps';

// |Σh_e|² ≤ b·Σ|h_e|² holds exactly; this much relative excess is float32 rounding, more is a units error.
export const CAUCHY_SCHWARZ_SLACK = 1e-3;

interface MicroBatch {
  readonly examples: number;
  readonly sqNorms: readonly number[];
  /** Per-example source: Σ_e |h_e|² per layer; null without it. */
  readonly exampleSqNormSums: readonly number[] | null;
  /** Those sums are sampled estimates (PerExampleSqNorms.sampled): no Cauchy–Schwarz bound on them. */
  readonly sampled: boolean;
}

/** What dense shards need: a backend to reduce them, a byte budget, one reused aligned buffer. */
export interface DenseContext {
  readonly backend: ReductionBackend;
  readonly budget: ByteBudget;
  readonly payloads: AlignedPayloads;
}

/** One rank's shards of one step, before its StepEnd. */
interface OpenStep {
  readonly micro: Map<number, MicroBatch>;
  dense: RankDenseStep | null;
  /** A dense chunk was refused: the step is excluded at its end (its later chunks are dropped quietly). */
  denseFailure: NoiseScopeError | null;
}

interface RankState {
  /** Steps with shards but no StepEnd yet. */
  readonly open: Map<number, OpenStep>;
  /** Highest step this rank has ended; -1 before the first. */
  lastEnded: number;
}

interface PendingStep {
  /** Ranks that ended the step (a skipped step has a rank here but no RankStep). */
  readonly endedBy: Set<number>;
  readonly ranks: Map<number, RankStep>;
  lr: number | null;
  loss: number | null;
  skipReason: string | null;
  globalExamples: number;
  unixMs: number;
  /** Set when a rank's per-example sums disagree with another's: the step is excluded once every rank ended it. */
  inconsistent: boolean;
  /** Sidecar clock (Date.now()) when the first rank ended it: the partial-step timeout counts from here. */
  readonly firstEndedMs: number;
}

export type StepOutcome =
  | { readonly kind: 'completed'; readonly step: CompletedStep }
  | { readonly kind: 'waiting-for-ranks' }
  /** Every rank ended it, but it was refused earlier (already reported to the rank that made it so). */
  | { readonly kind: 'excluded' }
  | { readonly kind: 'incomplete'; readonly error: NoiseScopeError };

/**
 * Joins one run's shards and step ends into CompletedSteps. Every method
 * validates before it changes anything, so a refused message loses nothing
 * already accepted.
 */
export class StepAssembler {
  private readonly ranks = new Map<number, RankState>();
  private readonly pending = new Map<number, PendingStep>();
  private abandoned = 0;
  /** Ranks whose stream ended without Goodbye, and when (sidecar clock); cleared when they attach again. */
  private readonly lost = new Map<number, number>();
  /** Ranks whose Hello says their per-example sums are sampled estimates: no Cauchy–Schwarz bound on them. */
  private readonly sampledRanks = new Set<number>();
  /**
   * Lost ranks that stayed away past the partial-step timeout, and since when: a step first ended after that,
   * missing only them, is given up at once (steps already waiting keep their own timeout).
   */
  private readonly gone = new Map<number, number>();
  /** Gone ranks whose declaration a step note has not carried yet. */
  private readonly unannounced = new Set<number>();
  /**
   * Steps given up because a rank that ended them restarted. Reported partial (by expirePartial) once the rank's new
   * process ends a later step (a resumed training continuing the numbering); forgotten if it ends one not after
   * (it numbers from 0 again, or rewound: a step of that number is coming), so no step number is reported twice.
   */
  private restartedSteps: { readonly rank: number; readonly report: CompletedStep; continued: boolean | null }[] = [];
  /** Data-parallel dense runs: each step's Gram over every rank's micro-batches (src/ingest/cross-rank-step.ts). */
  private readonly crossRank: CrossRankSteps | null;
  /** Steps given up by each limit since the run began (health counts them among incomplete steps); the first is reported. */
  private readonly evictions: Record<EvictingLimit, number> = { openStepsPerRank: 0, pendingSteps: 0 };
  /** The first eviction by each limit, as a skipped step saying which limit and how to raise it, until taken. */
  private evictionReports: CompletedStep[] = [];

  constructor(
    readonly layout: RunLayout,
    private readonly dense: DenseContext | null = null,
    private readonly limits: StepLimits = DEFAULT_LIMITS,
  ) {
    this.crossRank =
      dense && layout.worldSize > 1
        ? new CrossRankSteps(dense.backend, layout, dense.budget, limits.openStepsPerRank, (step) =>
            this.noteEviction('openStepsPerRank', step, `run '${layout.run}' had ${limits.openStepsPerRank} dense steps open across its ranks`, null),
          )
        : null;
  }

  /** Counts a step `limit` gave up; the run's first by that limit is also reported, as a skipped step saying why. */
  private noteEviction(limit: EvictingLimit, step: number, why: string, pending: PendingStep | null): void {
    if (this.evictions[limit]++ > 0) return;
    this.evictionReports.push({
      run: this.layout.run,
      step,
      ranks: [],
      globalExamples: pending?.globalExamples ?? 0,
      lr: pending?.lr ?? null,
      loss: pending?.loss ?? null,
      skipReason:
        `evicted: ${why}, so step ${step}, the oldest, was given up ${limitHint(limit, this.limits[limit])}. ` +
        'Reported once per run: later evictions are counted in health\'s incomplete steps',
      unixMs: pending?.unixMs || Date.now(),
    });
  }

  /** Once per run and limit: the first step that limit gave up, as a skipped step naming the limit (then []). */
  takeEvictionReports(): CompletedStep[] {
    const reports = this.evictionReports;
    this.evictionReports = [];
    return reports;
  }

  /** Bytes of dense data held for this run's incomplete steps. */
  get denseBytesHeld(): number {
    return this.dense?.budget.held ?? 0;
  }

  /** Resolves when the rank's reductions for `step` are done (call before endStep); null when none run. */
  settling(rank: number, step: number): Promise<void> | null {
    return this.ranks.get(rank)?.open.get(step)?.dense?.settled() ?? null;
  }

  /** Frees every open step's dense memory (the sidecar is closing). */
  releaseAll(): void {
    for (const state of this.ranks.values()) for (const open of state.open.values()) open.dense?.release();
    this.crossRank?.releaseAll();
  }

  /** Steps given up (missing shards, evicted by a limit) since the last call. */
  takeAbandoned(): number {
    const n = this.abandoned;
    this.abandoned = 0;
    return n;
  }

  /**
   * A new process took the rank over (a new hook session): it numbers its steps from 0 again, or from its
   * checkpoint (watch(first_step=...)), so forget what the old one had ended or left open.
   */
  restartRank(rank: number): void {
    this.rankBack(rank);
    // Steps the old process ended can never be joined (the new one may number a different step the same):
    // if the new one continues after them, each is reported as partial, as the timeout would have.
    for (const [step, pending] of [...this.pending]) {
      if (pending.endedBy.has(rank)) {
        this.pending.delete(step);
        this.crossRank?.drop(step);
        this.abandoned++;
        const why = `partial: rank ${rank} restarted (a new process) before ${this.rankList(this.missingRanks(pending))} ended step ${step} — excluded`;
        this.restartedSteps.push({ rank, report: this.givenUp(step, pending, why), continued: null });
      }
    }
    this.crossRank?.restarted(rank);
    const state = this.ranks.get(rank);
    if (!state) return;
    this.abandoned += state.open.size;
    for (const step of [...state.open.keys()]) this.dropOpen(state, step);
    this.ranks.delete(rank);
  }

  /** The rank's stream ended without Goodbye (crash, kill, network): gone if not back within the partial-step timeout. */
  rankLeft(rank: number, nowMs: number): void {
    if (!this.gone.has(rank) && !this.lost.has(rank)) this.lost.set(rank, nowMs);
  }

  /** What the rank's (latest) Hello says about its per-example sums: sampled estimates, or exact. */
  declarePerExampleSampled(rank: number, sampled: boolean): void {
    if (sampled) this.sampledRanks.add(rank);
    else this.sampledRanks.delete(rank);
  }

  /** The rank attached again (a reconnection or a new process): its steps count again. */
  rankBack(rank: number): void {
    this.lost.delete(rank);
    this.gone.delete(rank);
    this.unannounced.delete(rank);
  }

  /** Ranks declared gone (their stream ended without Goodbye and they did not come back in time). */
  get goneRanks(): readonly number[] {
    return [...this.gone.keys()].sort((a, b) => a - b);
  }

  addShard(rank: number, shard: GradientShard__Output): void {
    if (shard.payload === 'dense' && shard.dense) return this.addDenseShard(rank, shard, shard.dense);
    const where = `step ${shard.step} micro-batch ${shard.microBatch}`;
    if (shard.payload !== 'sqNorms' || !shard.sqNorms) {
      throw new NoiseScopeError(
        'not-implemented',
        `${where}: ${shard.payload ?? 'empty'} shards are not handled by this sidecar version (it reduces sq_norms and dense)`,
      );
    }
    const state = this.rankState(rank);
    this.checkStepIsNew(state, rank, shard.step, where);
    if (shard.examples < 1) throw new NoiseScopeError('invalid-message', `${where}: examples must be ≥ 1, got ${shard.examples}`);
    const maxMicro = this.limits.microBatchesPerStep;
    if (shard.microBatch >= maxMicro) throw limitExceeded('microBatchesPerStep', maxMicro, `${where}: micro-batch index ${shard.microBatch} is beyond the micro-batches one step may have`);
    const values = shard.sqNorms.values;
    this.checkNorms(values, `${where}: sq_norms`);
    const exampleSqNormSums = shard.perExample ? shard.perExample.sums : null;
    const sampled = shard.perExample?.sampled === true;
    if (exampleSqNormSums) {
      this.checkNorms(exampleSqNormSums, `${where}: per_example.sums`);
      if (!sampled && !this.sampledRanks.has(rank)) this.checkCauchySchwarz(values, exampleSqNormSums, shard.examples, where);
    }
    if (state.open.get(shard.step)?.micro.has(shard.microBatch)) {
      throw new NoiseScopeError('duplicate', `${where}: already received from rank ${rank}`);
    }
    this.openStep(state, rank, shard.step).micro.set(shard.microBatch, { examples: shard.examples, sqNorms: values, exampleSqNormSums, sampled });
  }

  /**
   * A dense chunk of micro-batch j's contribution h_j to one layer, into the rank's StepGram for the step.
   * A bad chunk is refused and its step excluded (the rest of the step's chunks are then dropped quietly,
   * its memory released); nothing else is lost.
   */
  private addDenseShard(rank: number, shard: GradientShard__Output, chunk: DenseChunk__Output): void {
    const where = `step ${shard.step} micro-batch ${shard.microBatch} layer ${shard.layer} offset ${chunk.offset}`;
    const state = this.rankState(rank);
    this.checkStepIsNew(state, rank, shard.step, where);
    // A dense shard in a norms run (or without a backend) is refused alone: the run's steps are not dense.
    const context = this.denseContext(where);
    const existing = state.open.get(shard.step);
    if (existing?.denseFailure) return;
    try {
      const values = this.denseValues(shard, chunk, existing?.dense ?? null, context, where);
      const open = this.openStep(state, rank, shard.step);
      open.dense ??= this.crossRank
        ? this.crossRank.view(rank, shard.step, shard.microBatches, where)
        : new DenseRankStep(context.backend, shard.microBatches, this.layout, context.budget, where);
      open.dense.add(shard.microBatch, shard.examples, shard.layer, chunk.offset, values, where);
    } catch (error) {
      const open = this.openStep(state, rank, shard.step);
      const failure = error instanceof NoiseScopeError ? error : new NoiseScopeError('invalid-message', `${where}: ${(error as Error).message}`);
      open.denseFailure = failure;
      open.dense?.fail(failure);
      throw failure;
    }
  }

  private denseContext(where: string): DenseContext {
    if (!this.dense) throw new NoiseScopeError('not-implemented', `${where}: this sidecar was started without a compute backend for dense shards`);
    if (this.layout.mode !== 'dense') {
      throw new NoiseScopeError('invalid-message', `${where}: run '${this.layout.run}' said mode ${this.layout.mode} in its Hello; dense shards need MODE_DENSE`);
    }
    return this.dense;
  }

  /** Checks the chunk against the run's layout and the step's earlier chunks; its values as float32. */
  private denseValues(shard: GradientShard__Output, chunk: DenseChunk__Output, dense: RankDenseStep | null, context: DenseContext, where: string): Float32Array {
    const invalid = (why: string) => new NoiseScopeError('invalid-message', `${where}: ${why}`);
    const layer = this.layout.layers[shard.layer];
    if (layer === undefined) throw new NoiseScopeError('unknown-layer', `${where}: layer ${shard.layer} is not one of run '${this.layout.run}''s ${this.layout.layers.length} layers`);
    const k = shard.microBatches;
    if (k < 1) throw invalid('micro_batches (K, the micro-batches in this step on this rank) is required for dense shards');
    if (k > this.limits.microBatchesPerStep) throw limitExceeded('microBatchesPerStep', this.limits.microBatchesPerStep, `${where}: micro_batches ${k} is too many for one step`);
    if (dense && dense.microBatches !== k) throw invalid(`micro_batches ${k}, but earlier chunks of this step said ${dense.microBatches}`);
    if (shard.microBatch >= k) throw invalid(`micro-batch index ${shard.microBatch} is not below micro_batches ${k}`);
    if (shard.examples < 1) throw invalid(`examples must be ≥ 1, got ${shard.examples}`);
    const size = WIRE_DTYPE_BYTES[chunk.dtype as WireDtype];
    if (size === undefined) throw invalid(`unknown dtype ${String(chunk.dtype)}: send DTYPE_F32, DTYPE_F16 or DTYPE_BF16`);
    const bytes = chunk.data.byteLength;
    if (bytes === 0) throw invalid('empty data');
    if (bytes % size !== 0) throw invalid(`${bytes} bytes of data is not a whole number of ${chunk.dtype} values (${size} bytes each)`);
    const end = chunk.offset + bytes / size;
    if (end > layer.numel) throw invalid(`chunk [${chunk.offset}, ${end}) is beyond layer '${layer.name}' of ${layer.numel} elements`);
    return context.payloads.toFloat32(chunk.data, chunk.dtype as WireDtype);
  }

  /** The rank's open entry for `step`, created (evicting the oldest past the limit) when new. */
  private openStep(state: RankState, rank: number, step: number): OpenStep {
    let open = state.open.get(step);
    if (open) return open;
    const limit = this.limits.openStepsPerRank;
    if (state.open.size >= limit) {
      // The oldest open step cannot be waited for forever (and its dense memory is freed).
      const oldest = Math.min(...state.open.keys());
      this.dropOpen(state, oldest);
      this.abandoned++;
      this.noteEviction('openStepsPerRank', oldest, `rank ${rank} had ${limit} steps open (shards sent, no StepEnd yet)`, null);
    }
    open = { micro: new Map(), dense: null, denseFailure: null };
    state.open.set(step, open);
    return open;
  }

  /** Forgets an open step, releasing any dense memory it holds. */
  private dropOpen(state: RankState, step: number): void {
    state.open.get(step)?.dense?.release();
    state.open.delete(step);
  }

  endStep(rank: number, end: StepEnd__Output): StepOutcome {
    const where = `step ${end.step}`;
    const state = this.rankState(rank);
    this.checkStepIsNew(state, rank, end.step, `${where} end`);
    const open = state.open.get(end.step);
    const micro = open?.micro ?? new Map<number, MicroBatch>();
    const dense = open !== undefined && (open.dense !== null || open.denseFailure !== null);
    let rankStep: RankStep | null = null;
    let failure: NoiseScopeError | null = null;
    if (!end.skipped) {
      // Malformed step ends are refused outright; missing shards only void the step.
      // A dense step's accumulated norms come from its Gram matrices: the StepEnd may leave them out.
      if (!dense || end.accumulatedSqNorms.length > 0) this.checkNorms(end.accumulatedSqNorms, `${where}: accumulated_sq_norms`);
      if (end.reducedSqNorms.length > 0) this.checkNorms(end.reducedSqNorms, `${where}: reduced_sq_norms`);
      else if (end.reducedIsShard) throw new NoiseScopeError('invalid-message', `${where}: reduced_is_shard is set but reduced_sq_norms is empty`);
      if (end.microBatches < 1) throw new NoiseScopeError('invalid-message', `${where}: micro_batches must be ≥ 1`);
      if (dense) {
        const figures = this.denseFigures(rank, open, end);
        if (figures instanceof NoiseScopeError) failure = figures;
        else rankStep = this.toDenseRankStep(rank, figures, end);
      } else {
        failure = this.missingShards(micro, end) ?? this.mixedPerExample(micro, end.step);
        if (!failure) rankStep = this.toRankStep(rank, micro, end);
      }
      if (rankStep && end.localExamples > 0) {
        const sum = rankStep.microExamples.reduce((a, b) => a + b, 0);
        if (sum !== end.localExamples) {
          throw new NoiseScopeError(
            'invalid-message',
            `${where}: local_examples ${end.localExamples} ≠ ${sum}, the sum over its micro-batch shards`,
          );
        }
      }
    }

    // Accepted: this rank is done with the step and every older open one.
    state.lastEnded = end.step;
    for (const restarted of this.restartedSteps) if (restarted.rank === rank) restarted.continued ??= end.step > restarted.report.step;
    for (const step of [...state.open.keys()]) {
      if (step <= end.step) {
        this.dropOpen(state, step);
        if (step < end.step) this.abandoned++;
      }
    }
    if (failure) {
      this.pending.delete(end.step);
      this.crossRank?.drop(end.step);
      this.abandoned++;
      return { kind: 'incomplete', error: failure };
    }

    const pending = this.pendingStep(end.step);
    const mismatch = rankStep ? (this.perExampleMismatch(pending, rankStep, end.step) ?? this.reducedShardMismatch(pending, rankStep, end.step)) : null;
    if (mismatch) {
      pending.inconsistent = true;
      rankStep = null;
    }
    if (end.skipped) pending.skipReason ??= end.skipReason || 'step skipped by the hook';
    if (rankStep) pending.ranks.set(rank, rankStep);
    pending.lr ??= Number.isFinite(end.lr) && end.lr > 0 ? end.lr : null;
    pending.loss ??= Number.isFinite(end.loss) ? end.loss : null;
    pending.globalExamples += end.localExamples || (rankStep?.microExamples.reduce((a, b) => a + b, 0) ?? 0);
    pending.unixMs = Math.max(pending.unixMs, end.unixMs || Date.now());
    pending.endedBy.add(rank);
    if (mismatch) return { kind: 'incomplete', error: mismatch };
    if (pending.endedBy.size < this.layout.worldSize) return { kind: 'waiting-for-ranks' };

    this.pending.delete(end.step);
    // A step some rank skipped (non-finite gradients) is reported as skipped, its Gram unread.
    if (pending.skipReason !== null) this.crossRank?.drop(end.step);
    const joined = pending.skipReason === null ? (this.crossRank?.join(end.step) ?? null) : null;
    if (pending.inconsistent) {
      this.abandoned++;
      return { kind: 'excluded' };
    }
    if (joined instanceof NoiseScopeError) {
      this.abandoned++;
      return { kind: 'incomplete', error: joined };
    }
    if (joined) for (const rankStep of joined) pending.ranks.set(rankStep.rank, rankStep);
    return {
      kind: 'completed',
      step: {
        run: this.layout.run,
        step: end.step,
        ranks: [...pending.ranks.values()].sort((a, b) => a.rank - b.rank),
        globalExamples: pending.globalExamples,
        lr: pending.lr,
        loss: pending.loss,
        skipReason: pending.skipReason,
        unixMs: pending.unixMs,
      },
    };
  }

  /**
   * Gives up the steps some but not all ranks ended, whose first end is older than `timeoutMs`
   * (a rank died or stalled): each is dropped, counted as abandoned, and returned once as a
   * skipped CompletedStep so it is reported as partial and excluded from the estimate.
   * Later steps the surviving ranks end are pending too, and each expires the same way.
   */
  expirePartial(nowMs: number, timeoutMs: number): CompletedStep[] {
    const seconds = timeoutMs / 1000;
    for (const [rank, leftMs] of this.lost) {
      if (nowMs - leftMs < timeoutMs) continue;
      this.lost.delete(rank);
      this.gone.set(rank, nowMs);
      this.unannounced.add(rank);
    }
    const expired = this.restartedSteps.filter((r) => r.continued === true).map((r) => r.report);
    this.restartedSteps = this.restartedSteps.filter((r) => r.continued === null);
    const steps = [...this.pending.keys()].sort((a, b) => a - b);
    for (const step of steps) {
      const pending = this.pending.get(step) as PendingStep;
      const missing = this.missingRanks(pending);
      const onlyGone = missing.every((r) => (this.gone.get(r) ?? Infinity) <= pending.firstEndedMs);
      if (!onlyGone && nowMs - pending.firstEndedMs < timeoutMs) continue;
      this.pending.delete(step);
      this.crossRank?.drop(step);
      this.abandoned++;
      const ranks = this.rankList(missing);
      const declared = onlyGone ? missing.filter((r) => this.unannounced.delete(r)) : [];
      const skipReason = !onlyGone
        ? `partial: ${ranks} never ended step ${step} within ${seconds} s — excluded`
        : declared.length > 0
          ? `partial: ${ranks} declared gone (the stream ended without Goodbye and did not come back within ${seconds} s): ` +
            `step ${step} and later steps without ${missing.length === 1 ? 'it' : 'them'} are excluded at once until ${missing.length === 1 ? 'it rejoins' : 'they rejoin'}`
          : `partial: ${ranks} gone — step ${step} excluded`;
      expired.push(this.givenUp(step, pending, skipReason));
    }
    return expired.sort((a, b) => a.step - b.step);
  }

  /** Whether a step waits for ranks or a rank may be declared gone (the partial-step timer has something to check). */
  get hasPending(): boolean {
    return this.pending.size > 0 || this.lost.size > 0;
  }

  private missingRanks(pending: PendingStep): number[] {
    const missing: number[] = [];
    for (let r = 0; r < this.layout.worldSize; r++) if (!pending.endedBy.has(r)) missing.push(r);
    return missing;
  }

  private rankList(ranks: readonly number[]): string {
    return `rank${ranks.length === 1 ? '' : 's'} ${ranks.join(', ')} of ${this.layout.worldSize}`;
  }

  /** A step given up, as the skipped CompletedStep that reports it partial. */
  private givenUp(step: number, pending: PendingStep, skipReason: string): CompletedStep {
    return {
      run: this.layout.run,
      step,
      ranks: [],
      globalExamples: pending.globalExamples,
      lr: pending.lr,
      loss: pending.loss,
      skipReason,
      unixMs: pending.unixMs,
    };
  }

  private pendingStep(step: number): PendingStep {
    let pending = this.pending.get(step);
    if (!pending) {
      const limit = this.limits.pendingSteps;
      if (this.pending.size >= limit) {
        // A rank that never ends its steps must not grow memory without bound.
        const oldest = Math.min(...this.pending.keys());
        const evicted = this.pending.get(oldest) as PendingStep;
        this.pending.delete(oldest);
        this.crossRank?.drop(oldest);
        this.abandoned++;
        this.noteEviction('pendingSteps', oldest, `run '${this.layout.run}' had ${limit} steps that some but not all ranks ended`, evicted);
      }
      pending = { endedBy: new Set(), ranks: new Map(), lr: null, loss: null, skipReason: null, globalExamples: 0, unixMs: 0, inconsistent: false, firstEndedMs: Date.now() };
      this.pending.set(step, pending);
    }
    return pending;
  }

  private rankState(rank: number): RankState {
    let state = this.ranks.get(rank);
    if (!state) {
      state = { open: new Map(), lastEnded: -1 };
      this.ranks.set(rank, state);
    }
    return state;
  }

  private checkStepIsNew(state: RankState, rank: number, step: number, where: string): void {
    if (step === state.lastEnded) {
      throw new NoiseScopeError('duplicate', `${where}: rank ${rank} already ended step ${step}`);
    }
    if (step < state.lastEnded) {
      throw new NoiseScopeError(
        'step-regression',
        `${where}: goes backwards, rank ${rank} already ended step ${state.lastEnded}`,
      );
    }
  }

  private checkNorms(values: readonly number[], what: string): void {
    const layers = this.layout.layers;
    if (values.length !== layers.length) {
      throw new NoiseScopeError(
        'invalid-message',
        `${what} has ${values.length} values; run '${this.layout.run}' declared ${layers.length} layers`,
      );
    }
    for (let i = 0; i < values.length; i++) {
      const v = values[i] as number;
      if (!Number.isFinite(v)) {
        throw new NoiseScopeError(
          'invalid-message',
          `${what}[${i}] (layer '${layers[i]?.name}') is ${v}; report a non-finite gradient as StepEnd.skipped`,
        );
      }
      if (v < 0) {
        throw new NoiseScopeError('invalid-message', `${what}[${i}] (layer '${layers[i]?.name}') is negative (${v})`);
      }
    }
  }

  /** Per-example sums bound each micro-batch's norm: |Σ_e h_e|² ≤ b·Σ_e |h_e|² (Cauchy–Schwarz). */
  private checkCauchySchwarz(sqNorms: readonly number[], sums: readonly number[], examples: number, where: string): void {
    for (let l = 0; l < sqNorms.length; l++) {
      const norm = sqNorms[l] as number;
      const bound = examples * (sums[l] as number);
      if (norm > bound * (1 + CAUCHY_SCHWARZ_SLACK)) {
        throw new NoiseScopeError(
          'invalid-message',
          `${where}: sq_norms[${l}] (layer '${this.layout.layers[l]?.name}') = ${norm} exceeds examples × per_example.sums[${l}] = ${examples} × ${sums[l]} = ${bound}, ` +
            'impossible for the sum of the examples\' contributions (Cauchy–Schwarz): are both in the same units (mean vs sum loss)?',
        );
      }
    }
  }

  /** A rank's micro-batches either all carry per-example sums or none do. */
  private mixedPerExample(micro: Map<number, MicroBatch>, step: number): NoiseScopeError | null {
    const carrying = [...micro.entries()].filter(([, m]) => m.exampleSqNormSums !== null).map(([i]) => i).sort((a, b) => a - b);
    if (carrying.length === 0 || carrying.length === micro.size) return null;
    const lacking = [...micro.keys()].filter((i) => !carrying.includes(i)).sort((a, b) => a - b);
    return new NoiseScopeError(
      'invalid-message',
      `step ${step} is inconsistent: micro-batch shard(s) ${carrying.join(', ')} carry per_example and ${lacking.join(', ')} do not; the step is excluded`,
    );
  }

  /** Every rank of a step either carries per-example sums or none does. */
  private perExampleMismatch(pending: PendingStep, rankStep: RankStep, step: number): NoiseScopeError | null {
    const has = rankStep.microExampleSqNormSums !== null;
    const other = [...pending.ranks.values()].find((r) => (r.microExampleSqNormSums !== null) !== has);
    if (!other) return null;
    return new NoiseScopeError(
      'invalid-message',
      `step ${step} is inconsistent: rank ${rankStep.rank} ${has ? 'carries' : 'lacks'} per_example but rank ${other.rank} ${has ? 'does not' : 'carries it'}; the step is excluded`,
    );
  }

  /** Every rank of a step sends its shard of the reduced gradient (FSDP) or none does: shards sum, wholes do not. */
  private reducedShardMismatch(pending: PendingStep, rankStep: RankStep, step: number): NoiseScopeError | null {
    const shard = rankStep.reducedIsShard === true;
    const other = [...pending.ranks.values()].find((r) => (r.reducedIsShard === true) !== shard);
    if (!other) return null;
    const says = (is: boolean) => (is ? 'a shard of the reduced gradient (reduced_is_shard)' : 'whole reduced norms');
    return new NoiseScopeError(
      'invalid-message',
      `step ${step} is inconsistent: rank ${rankStep.rank} sent ${says(shard)} but rank ${other.rank} ${says(!shard)}; the step is excluded`,
    );
  }

  private missingShards(micro: Map<number, MicroBatch>, end: StepEnd__Output): NoiseScopeError | null {
    const missing: number[] = [];
    for (let i = 0; i < end.microBatches; i++) if (!micro.has(i)) missing.push(i);
    const extra = [...micro.keys()].filter((i) => i >= end.microBatches);
    if (missing.length === 0 && extra.length === 0) return null;
    const parts = [];
    if (missing.length) parts.push(`micro-batch shard(s) ${missing.join(', ')} never arrived`);
    if (extra.length) parts.push(`shard(s) ${extra.join(', ')} are beyond the declared ${end.microBatches}`);
    return new NoiseScopeError(
      'incomplete-step',
      `step ${end.step} declared ${end.microBatches} micro-batches but ${parts.join(' and ')}: the step is excluded`,
    );
  }

  /** A dense step's figures from its Gram matrices, or why it is excluded. */
  private denseFigures(rank: number, open: OpenStep, end: StepEnd__Output): DenseStepFigures | NoiseScopeError {
    if (open.denseFailure) {
      return new NoiseScopeError(open.denseFailure.code, `step ${end.step} is excluded: a dense chunk was refused (${open.denseFailure.message})`);
    }
    if (open.micro.size > 0) {
      return new NoiseScopeError('invalid-message', `step ${end.step} mixes sq_norms and dense shards on rank ${rank}: the step is excluded`);
    }
    return (open.dense as RankDenseStep).finish(rank, end.step, end.microBatches);
  }

  private toDenseRankStep(rank: number, figures: DenseStepFigures, end: StepEnd__Output): RankStep {
    return {
      rank,
      microSqNorms: figures.microSqNorms,
      microExamples: figures.microExamples,
      accumulatedSqNorms: figures.accumulatedSqNorms,
      reducedSqNorms: end.reducedSqNorms.length > 0 ? end.reducedSqNorms : null,
      reducedIsShard: end.reducedIsShard,
      microExampleSqNormSums: null,
      diversity: figures.diversity,
    };
  }

  private toRankStep(rank: number, micro: Map<number, MicroBatch>, end: StepEnd__Output): RankStep {
    const ordered = [...micro.entries()].sort((a, b) => a[0] - b[0]).map(([, m]) => m);
    return {
      rank,
      microSqNorms: ordered.map((m) => m.sqNorms),
      microExamples: ordered.map((m) => m.examples),
      accumulatedSqNorms: end.accumulatedSqNorms,
      reducedSqNorms: end.reducedSqNorms.length > 0 ? end.reducedSqNorms : null,
      reducedIsShard: end.reducedIsShard,
      // All or none (mixedPerExample checked it).
      microExampleSqNormSums: ordered.every((m) => m.exampleSqNormSums !== null) ? ordered.map((m) => m.exampleSqNormSums as readonly number[]) : null,
      ...(ordered.some((m) => m.sampled) ? { perExampleSampled: true as const } : {}),
    };
  }
}
