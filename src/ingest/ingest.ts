import type { ReductionBackend } from '../compute/reduction-backend.js';
import { BehaviorSubject, Subject, type Observable } from 'rxjs';
import { NoiseScopeError } from '../errors.js';
import type { GradientShard__Output } from '../transport/generated/noisescope/v1/GradientShard.js';
import type { Hello__Output } from '../transport/generated/noisescope/v1/Hello.js';
import type { StepEnd__Output } from '../transport/generated/noisescope/v1/StepEnd.js';
import type { RunInfo, Source } from '../types.js';
import { perExampleSampledIn, sourceOf, type CompletedStep } from './completed-step.js';
import { checkSameLayout, layoutFromHello, type RunLayout } from './run-layout.js';
import { AlignedPayloads } from '../transport/aligned-copy.js';
import { ByteBudget, DENSE_BUDGET_BYTES } from './dense-rank-step.js';
import { StepAssembler, type StepLimits, type StepOutcome } from './step-assembler.js';
import { refuseSketchOutsideSketchMode, SketchShards, sketchReductionLayout } from './sketch-shards.js';
import { DEFAULT_LIMITS, limitExceeded, type SidecarLimits } from '../transport/limits.js';

/** How long a step some but not all ranks ended waits for the rest before it is reported partial and excluded. */
export const DEFAULT_PARTIAL_STEP_TIMEOUT_MS = 30_000;

export interface IngestOptions {
  /** Reduces dense shards into Gram matrices; dense runs are refused without one. */
  readonly backend?: ReductionBackend;
  /** Bytes of dense data held for incomplete steps, over all runs (DENSE_BUDGET_BYTES by default). */
  readonly denseBudgetBytes?: number;
  /**
   * A step some but not all ranks ended is given up this long after its first end (DEFAULT_PARTIAL_STEP_TIMEOUT_MS):
   * reported once as a skipped step (partial, excluded) and counted in stepsIncomplete. Checked whenever a rank
   * of the run ends a step, and on a coarse timer so a run whose every rank went quiet does not stall.
   */
  readonly partialStepTimeoutMs?: number;
  /** Runs held at once, layers and ranks per run, and each run's step bounds (DEFAULT_LIMITS). */
  readonly limits?: Pick<SidecarLimits, 'runs' | 'layersPerRun' | 'ranksPerRun'> & Partial<StepLimits>;
}

/** A completed step with the layout of its run, as the stats stage needs it. */
export interface IngestedStep {
  readonly layout: RunLayout;
  readonly step: CompletedStep;
}

/** Counters behind health$. */
export interface IngestCounters {
  messages: number;
  payloadBytes: number;
  refused: number;
  stepsCompleted: number;
  stepsIncomplete: number;
  droppedByHooks: number;
}

interface RunEntry {
  readonly layout: RunLayout;
  readonly assembler: StepAssembler;
  /** Live session per rank; a reconnecting rank replaces its old one. */
  readonly sessions: Map<number, RankSession>;
  readonly goodbyes: Set<number>;
  readonly dropped: Map<number, number>;
  /** The hook session each rank last attached with. */
  readonly hookSessions: Map<number, string>;
  source: Source;
  /** The latest measured step's per-example sums were sampled estimates: said beside the source, as the Hello's flag is. */
  stepSampled: boolean;
  readonly startedUnixMs: number;
  /** Sketch mode: checks each sketch and splits it into per-layer chunks for the assembler. */
  readonly sketches: SketchShards | null;
}

/** One rank's stream, after its Hello was accepted. */
export class RankSession {
  private attached = true;
  private readonly replacedListeners: (() => void)[] = [];

  constructor(
    readonly run: string,
    readonly rank: number,
    private readonly owner: { stepEnd(end: StepEnd__Output): StepOutcome | Promise<StepOutcome>; shard(shard: GradientShard__Output): void; goodbye(dropped: number): void; detach(session: RankSession): void },
  ) {}

  shard(shard: GradientShard__Output): void {
    this.owner.shard(shard);
  }

  /** A promise only when a dense step's reductions are still running (the caller waits before its next message). */
  stepEnd(end: StepEnd__Output): StepOutcome | Promise<StepOutcome> {
    return this.owner.stepEnd(end);
  }

  goodbye(dropped: number): void {
    this.owner.goodbye(dropped);
  }

  /** The stream ended; idempotent. */
  detach(): void {
    if (!this.attached) return;
    this.attached = false;
    this.owner.detach(this);
  }

  /** Registers what to do when a newer connection of the same rank takes over. */
  onReplaced(listener: () => void): void {
    this.replacedListeners.push(listener);
  }

  replaced(): void {
    this.detach();
    for (const listener of this.replacedListeners) listener();
  }
}

/** The first stage: validated messages in, completed steps and run info out. */
export class Ingest {
  private readonly runs = new Map<string, RunEntry>();
  private readonly steps = new Subject<IngestedStep>();
  private readonly runInfo = new BehaviorSubject<readonly RunInfo[]>([]);
  readonly counters: IngestCounters = {
    messages: 0,
    payloadBytes: 0,
    refused: 0,
    stepsCompleted: 0,
    stepsIncomplete: 0,
    droppedByHooks: 0,
  };

  readonly steps$: Observable<IngestedStep> = this.steps.asObservable();
  readonly runs$: Observable<readonly RunInfo[]> = this.runInfo.asObservable();

  /** One reused aligned buffer: dense payloads are converted synchronously, one message at a time. */
  private readonly payloads = new AlignedPayloads();
  /** Dense bytes held for incomplete steps, over all runs: each run reserves against it through its share. */
  private readonly denseBudget: ByteBudget;

  private readonly partialStepTimeoutMs: number;
  private readonly partialTimer: ReturnType<typeof setInterval>;
  private closed = false;

  constructor(private readonly options: IngestOptions = {}) {
    const timeout = options.partialStepTimeoutMs ?? DEFAULT_PARTIAL_STEP_TIMEOUT_MS;
    if (!(timeout > 0)) throw new NoiseScopeError('invalid-message', `partialStepTimeoutMs must be > 0, got ${timeout}`);
    this.partialStepTimeoutMs = timeout;
    this.denseBudget = new ByteBudget(options.denseBudgetBytes ?? DENSE_BUDGET_BYTES);
    // Coarse: a step is given up between timeout and ~1.5× timeout (or timeout + 5 s) after its first end.
    const period = Math.min(Math.max(timeout / 2, 10), 5_000);
    this.partialTimer = setInterval(() => {
      for (const run of this.runs.values()) if (run.assembler.hasPending) this.expirePartial(run);
    }, period);
    this.partialTimer.unref();
  }

  /** Bytes of dense data held for a run's incomplete steps (0 for an unknown run). */
  denseBytesHeld(run: string): number {
    return this.runs.get(run)?.assembler.denseBytesHeld ?? 0;
  }

  hasRun(run: string): boolean {
    return this.runs.has(run);
  }

  ranksConnected(): number {
    let n = 0;
    for (const entry of this.runs.values()) n += entry.sessions.size;
    return n;
  }

  /** Ranks declared gone, summed over runs (a rank that attaches again is no longer counted). */
  ranksGone(): number {
    let n = 0;
    for (const entry of this.runs.values()) n += entry.assembler.goneRanks.length;
    return n;
  }

  /** Accepts a Hello (or throws why not) and returns the rank's session. */
  attach(hello: Hello__Output): RankSession {
    const limits = this.options.limits ?? DEFAULT_LIMITS;
    const layout = layoutFromHello(hello, limits);
    let entry = this.runs.get(layout.run);
    if (entry) {
      checkSameLayout(entry.layout, layout);
    } else {
      if (this.runs.size >= limits.runs && !this.forgetIdleRun()) {
        throw limitExceeded('runs', limits.runs, `Hello for run '${layout.run}': this sidecar already holds ${this.runs.size} runs, each with a rank attached`);
      }
      entry = {
        layout,
        assembler: new StepAssembler(sketchReductionLayout(layout), this.denseContext(), { ...DEFAULT_LIMITS, ...limits }),
        sketches: layout.sketch ? new SketchShards(layout, layout.sketch) : null,
        sessions: new Map(),
        goodbyes: new Set(),
        dropped: new Map(),
        hookSessions: new Map(),
        source: 'none',
        stepSampled: false,
        startedUnixMs: Date.now(),
      };
      this.runs.set(layout.run, entry);
    }
    const run = entry;
    const rank = hello.rank;
    const previousSession = run.hookSessions.get(rank);
    if (previousSession !== undefined && previousSession !== hello.session) {
      // Same run name, new process: its steps start again from 0.
      run.assembler.restartRank(rank);
      run.dropped.delete(rank);
    }
    run.hookSessions.set(rank, hello.session);
    this.noteDropped(run, rank, hello.dropped);
    run.goodbyes.delete(rank);
    run.assembler.rankBack(rank);
    run.assembler.declarePerExampleSampled(rank, hello.perExampleSampled);

    const finishStep = (end: StepEnd__Output): StepOutcome => {
      const outcome = run.assembler.endStep(rank, end);
      this.counters.stepsIncomplete += run.assembler.takeAbandoned();
      this.reportEvictions(run);
      // Later activity of the run: give up any older step a rank never ended.
      this.expirePartial(run);
      if (outcome.kind === 'completed') {
        this.counters.stepsCompleted++;
        const source = sourceOf(outcome.step);
        const sampled = perExampleSampledIn(outcome.step);
        if ((source !== run.source || sampled !== run.stepSampled) && !outcome.step.skipReason) {
          run.source = source;
          run.stepSampled = sampled;
          this.publishRuns();
        }
        this.steps.next({ layout: run.layout, step: outcome.step });
      }
      return outcome;
    };
    const session = new RankSession(layout.run, rank, {
      shard: (shard) => {
        try {
          if (run.sketches) {
            for (const chunk of run.sketches.toChunks(rank, shard)) run.assembler.addShard(rank, chunk);
          } else {
            refuseSketchOutsideSketchMode(run.layout, shard);
            run.assembler.addShard(rank, shard);
          }
        } finally {
          // A new step past the open-step limit gave up the oldest, refused shard or not.
          this.reportEvictions(run);
        }
        this.counters.payloadBytes += ((shard.sqNorms?.values.length ?? 0) + (shard.perExample?.sums.length ?? 0)) * 8 + (shard.dense?.data.byteLength ?? 0) + (shard.sketch?.data.byteLength ?? 0);
      },
      stepEnd: (wireEnd) => {
        // A step one of whose sketches was refused ends as skipped, saying why.
        const end = run.sketches ? run.sketches.stepEnd(rank, wireEnd) : wireEnd;
        // A dense step ends once its reductions have: the assembler itself stays synchronous.
        const settling = run.assembler.settling(rank, end.step);
        return settling ? settling.then(() => finishStep(end)) : finishStep(end);
      },
      goodbye: (dropped) => {
        this.noteDropped(run, rank, dropped);
        run.goodbyes.add(rank);
      },
      detach: (which) => {
        if (run.sessions.get(rank) === which) {
          run.sessions.delete(rank);
          // No Goodbye: a crash or a lost connection; declared gone if it does not come back within the partial-step timeout.
          if (!run.goodbyes.has(rank)) run.assembler.rankLeft(rank, Date.now());
        }
        this.publishRuns();
      },
    });
    const previous = run.sessions.get(rank);
    run.sessions.set(rank, session);
    // A rank that reconnects before its old stream was noticed dead.
    previous?.replaced();
    this.publishRuns();
    return session;
  }

  close(): void {
    this.closed = true;
    clearInterval(this.partialTimer);
    for (const run of this.runs.values()) run.assembler.releaseAll();
    this.steps.complete();
    this.runInfo.complete();
  }

  /**
   * Makes room for a new run: forgets the oldest run that ended (every rank said Goodbye), else the oldest
   * with no rank attached (its ranks died); false when every run has a rank attached. Its run log and
   * published statistics stay; a rank that comes back later starts it afresh.
   */
  private forgetIdleRun(): boolean {
    const idle = [...this.runs.values()].filter((r) => r.sessions.size === 0);
    const victim = idle.find((r) => r.goodbyes.size >= r.layout.worldSize) ?? idle[0];
    if (!victim) return false;
    victim.assembler.releaseAll();
    this.runs.delete(victim.layout.run);
    this.publishRuns();
    return true;
  }

  /** Per run: its share of the one dense byte budget, the shared backend and buffer; null without a backend (dense refused). */
  private denseContext() {
    const backend = this.options.backend;
    if (!backend) return null;
    return { backend, budget: this.denseBudget.share(), payloads: this.payloads };
  }

  /** Reports each step of the run that waited for ranks past the timeout as skipped (partial), and forgets it. */
  private expirePartial(run: RunEntry): void {
    if (this.closed) return;
    const expired = run.assembler.expirePartial(Date.now(), this.partialStepTimeoutMs);
    if (expired.length === 0) return;
    this.counters.stepsIncomplete += run.assembler.takeAbandoned();
    for (const step of expired) this.steps.next({ layout: run.layout, step });
  }

  /** The run's first step given up by each step limit, reported once as a skipped step naming the limit. */
  private reportEvictions(run: RunEntry): void {
    if (this.closed) return;
    for (const step of run.assembler.takeEvictionReports()) this.steps.next({ layout: run.layout, step });
  }

  private noteDropped(run: RunEntry, rank: number, dropped: number): void {
    const before = run.dropped.get(rank) ?? 0;
    if (dropped > before) {
      this.counters.droppedByHooks += dropped - before;
      run.dropped.set(rank, dropped);
    }
  }

  private publishRuns(): void {
    this.runInfo.next(
      [...this.runs.values()].map((entry): RunInfo => {
        const ended = entry.sessions.size === 0 && entry.goodbyes.size >= entry.layout.worldSize;
        return {
          run: entry.layout.run,
          worldSize: entry.layout.worldSize,
          ranksConnected: entry.sessions.size,
          source: entry.source,
          mode: entry.layout.mode,
          layers: entry.layout.layers,
          parameters: entry.layout.layers.reduce((sum, l) => sum + l.numel, 0),
          uncoveredLayers: entry.layout.uncoveredLayers,
          datasetSize: entry.layout.datasetSize,
          every: entry.layout.every,
          startedUnixMs: entry.startedUnixMs,
          ended,
          optimizer: entry.layout.optimizer,
          policy: entry.layout.policy,
          ...(entry.layout.sketch ? { sketch: entry.layout.sketch } : {}),
          ...(entry.layout.perExampleSampled || entry.stepSampled ? { perExampleSampled: true as const } : {}),
        };
      }),
    );
  }
}

