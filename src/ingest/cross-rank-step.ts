// Dense (and sketch) steps under data parallelism: every rank's chunks of one step reduced into one Gram over
// all N = world·k micro-batch gradients (gradient rank·k + j), so the step's figures — each rank's micro-batch
// and accumulated norms, the all-reduced norm, and how the ranks' gradients agree — come from one place.
// A range's block waits only until every rank's matching chunk has come (StepGram); the step is held until
// every rank ended it, or the partial-step timeout or the open-step bound gives it up.
import type { ReductionBackend } from '../compute/reduction-backend.js';
import { NoiseScopeError } from '../errors.js';
import { gradientDiversity, rankAgreement } from '../stats/gradient-diversity.js';
import type { RankStep } from './completed-step.js';
import { DenseRankStep, type ByteBudget, type DenseStepFigures } from './dense-rank-step.js';
import type { RunLayout } from './run-layout.js';

/** What the assembler keeps per rank and open dense step: DenseRankStep alone, or a rank's view of a CrossRankStep. */
export interface RankDenseStep {
  readonly microBatches: number;
  add(microBatch: number, examples: number, layer: number, offset: number, values: Float32Array, where: string): void;
  settled(): Promise<void>;
  fail(error: NoiseScopeError): void;
  release(): void;
  finish(rank: number, step: number, declaredMicroBatches: number): DenseStepFigures | NoiseScopeError;
}

/** One step of a data-parallel dense run: a DenseRankStep over every rank's micro-batches (gradient rank·k + j). */
export class CrossRankStep {
  private readonly dense: DenseRankStep;

  constructor(
    backend: ReductionBackend,
    /** k: micro-batches per rank (every rank the same). */
    readonly microBatches: number,
    readonly worldSize: number,
    layout: RunLayout,
    budget: ByteBudget,
    where: string,
  ) {
    this.dense = new DenseRankStep(backend, microBatches * worldSize, layout, budget, where);
  }

  get failure(): NoiseScopeError | null {
    return this.dense.failure;
  }

  /** Takes one rank's chunk (float32); throws a NoiseScopeError saying why not. */
  add(rank: number, microBatch: number, examples: number, layer: number, offset: number, values: Float32Array, where: string): void {
    if (this.failure) return; // the step is excluded already; its later chunks are dropped quietly
    try {
      this.dense.add(rank * this.microBatches + microBatch, examples, layer, offset, values, where);
    } catch (error) {
      const { code, message } = error as NoiseScopeError;
      throw new NoiseScopeError(code, message.replace(/gradient (\d+)/g, (_, g: string) => this.nameOf(Number(g))));
    }
  }

  settled(): Promise<void> {
    return this.dense.settled();
  }

  /** Marks the step failed for every rank (the first reason wins) and frees what it holds. */
  fail(error: NoiseScopeError): void {
    this.dense.fail(error);
  }

  release(): void {
    this.dense.release();
  }

  /** At one rank's StepEnd: why its own part cannot count, or null (the Gram is read once every rank ended). */
  checkRank(rank: number, step: number, declaredMicroBatches: number): NoiseScopeError | null {
    if (this.failure) return new NoiseScopeError(this.failure.code, `step ${step} is excluded: ${this.failure.message}`);
    const k = this.microBatches;
    if (declaredMicroBatches !== k) return excluded(step, `rank ${rank}'s StepEnd declares ${declaredMicroBatches} micro-batches, its dense chunks ${k}`);
    const silent = range(k).filter((j) => this.dense.examples[rank * k + j] === undefined);
    if (silent.length > 0) return excluded(step, `rank ${rank}'s micro-batch(es) ${silent.join(', ')} of ${k} sent no dense chunk`);
    return null;
  }

  hasChunksOf(rank: number): boolean {
    return this.examplesOf(rank).some((e) => e !== undefined);
  }

  /** Examples behind each of the rank's micro-batches (after checkRank: all known). */
  examplesOf(rank: number): number[] {
    return this.dense.examples.slice(rank * this.microBatches, (rank + 1) * this.microBatches) as number[];
  }

  /** Every rank ended the step: each rank's figures from the whole Gram, or why the step is excluded. */
  join(step: number): RankStep[] | NoiseScopeError {
    const checked = range(this.worldSize).map((r) => this.checkRank(r, step, this.microBatches)).find((e) => e !== null);
    if (checked) return checked;
    const grams = this.dense.grams(step, (g) => this.nameOf(g));
    if (grams instanceof NoiseScopeError) return grams;
    const { microBatches: k, worldSize: world } = this;
    const n = k * world;
    // DDP steps with the ranks' average of their accumulated gradients: |Σ_all h|² / world².
    const reducedSqNorms = grams.map((g) => g.reduce((sum, v) => sum + v, 0) / (world * world));
    const agreement = rankAgreement(grams, world, k);
    const ranks = range(world).map((r): RankStep => {
      const blocks = grams.map((g) => block(g, n, r * k, k));
      return {
        rank: r,
        microSqNorms: range(k).map((j) => blocks.map((b) => b[j * k + j] as number)),
        microExamples: this.examplesOf(r),
        accumulatedSqNorms: blocks.map((b) => b.reduce((sum, v) => sum + v, 0)),
        reducedSqNorms,
        microExampleSqNormSums: null,
        diversity: { ...gradientDiversity(r, blocks, k), acrossRanks: agreement[r]! },
      };
    });
    this.release();
    return ranks;
  }

  /** "rank 1 micro-batch 0" for gradient rank·k + j. */
  private nameOf(gradient: number): string {
    return `rank ${Math.floor(gradient / this.microBatches)} micro-batch ${gradient % this.microBatches}`;
  }
}

/** One rank's side of a CrossRankStep, as the assembler's open step holds it. */
class RankView implements RankDenseStep {
  constructor(
    private readonly step: CrossRankStep,
    private readonly rank: number,
  ) {}
  get microBatches(): number {
    return this.step.microBatches;
  }
  add(microBatch: number, examples: number, layer: number, offset: number, values: Float32Array, where: string): void {
    this.step.add(this.rank, microBatch, examples, layer, offset, values, where);
  }
  settled(): Promise<void> {
    return this.step.settled();
  }
  /** A refused chunk of this rank excludes the step for every rank. */
  fail(error: NoiseScopeError): void {
    this.step.fail(new NoiseScopeError(error.code, `rank ${this.rank}: ${error.message}`));
  }
  /** The step's memory belongs to CrossRankSteps: a rank ending (or dropping) it frees nothing. */
  release(): void {}
  /** This rank's part checked; its figures are placeholders until CrossRankSteps.join() at the step's completion. */
  finish(rank: number, step: number, declaredMicroBatches: number): DenseStepFigures | NoiseScopeError {
    const why = this.step.checkRank(rank, step, declaredMicroBatches);
    if (why) return why;
    const k = this.step.microBatches;
    return {
      microSqNorms: [],
      microExamples: this.step.examplesOf(rank),
      accumulatedSqNorms: [],
      diversity: { rank, microBatches: k, cosines: [], layerCosines: [], meanCosine: [], disagreeing: [] },
    };
  }
}

/** A data-parallel dense run's open steps, by step; bounded (the oldest is given up first). */
export class CrossRankSteps {
  private readonly steps = new Map<number, CrossRankStep>();
  /** Steps given up, and why (the most recent GIVEN_UP_REMEMBERED): a rank's late chunks of one are not held again. */
  private readonly givenUp = new Map<number, NoiseScopeError>();

  constructor(
    private readonly backend: ReductionBackend,
    private readonly layout: RunLayout,
    private readonly budget: ByteBudget,
    private readonly maxSteps: number,
    /** Told of each step given up because maxSteps were open (it is counted and reported there). */
    private readonly onEvicted: (step: number) => void = () => {},
  ) {}

  /** The rank's handle on the step's Gram (opened at the step's first chunk from any rank). */
  view(rank: number, step: number, microBatches: number, where: string): RankDenseStep {
    const world = this.layout.worldSize;
    if (!Number.isInteger(rank) || rank < 0 || rank >= world) throw new NoiseScopeError('invalid-message', `${where}: rank ${rank} is outside 0..${world - 1}`);
    const gone = this.givenUp.get(step);
    if (gone) return new GivenUpView(microBatches, gone);
    let shared = this.steps.get(step);
    if (shared === undefined) {
      if (this.steps.size >= this.maxSteps) {
        const oldest = Math.min(...this.steps.keys());
        this.drop(oldest);
        this.onEvicted(oldest);
      }
      shared = new CrossRankStep(this.backend, microBatches, world, this.layout, this.budget, where);
      this.steps.set(step, shared);
    } else if (shared.microBatches !== microBatches) {
      const error = new NoiseScopeError(
        'invalid-message',
        `${where}: rank ${rank} says micro_batches ${microBatches}, but other ranks' chunks of this step said ${shared.microBatches}: a data-parallel dense step needs the same micro-batch count on every rank`,
      );
      shared.fail(error);
      throw error;
    }
    return new RankView(shared, rank);
  }

  /** Every rank ended `step`: its RankSteps, why it is excluded, or null when it has no Gram here. */
  join(step: number): RankStep[] | NoiseScopeError | null {
    const shared = this.steps.get(step);
    if (shared === undefined) return null;
    this.steps.delete(step);
    const joined = shared.join(step);
    shared.release();
    return joined;
  }

  /** Gives the step up (excluded, timed out, evicted), freeing its memory. */
  drop(step: number): void {
    // Failed, not just released: a rank still sending the step has its later chunks dropped quietly.
    const why = new NoiseScopeError('incomplete-step', `step ${step} was given up (a rank did not end it in time, or too many steps were open)`);
    this.steps.get(step)?.fail(why);
    this.steps.delete(step);
    this.givenUp.set(step, why);
    if (this.givenUp.size > GIVEN_UP_REMEMBERED) this.givenUp.delete(this.givenUp.keys().next().value as number);
  }

  /** A new process took the rank over, numbering its steps from 0: the steps its old one had chunks in are given
   *  up, and steps given up before are forgotten (their numbers are new steps now). */
  restarted(rank: number): void {
    for (const [step, shared] of [...this.steps]) if (shared.hasChunksOf(rank)) this.drop(step);
    this.givenUp.clear();
  }

  releaseAll(): void {
    for (const step of [...this.steps.keys()]) this.drop(step);
  }
}

const GIVEN_UP_REMEMBERED = 256;

/** A rank's view of a step already given up: its chunks are dropped unheld, and its end is excluded. */
class GivenUpView implements RankDenseStep {
  constructor(
    readonly microBatches: number,
    private readonly why: NoiseScopeError,
  ) {}
  add(): void {}
  settled(): Promise<void> {
    return Promise.resolve();
  }
  fail(): void {}
  release(): void {}
  finish(_rank: number, step: number): NoiseScopeError {
    return new NoiseScopeError(this.why.code, `step ${step} is excluded: ${this.why.message}`);
  }
}

function excluded(step: number, why: string): NoiseScopeError {
  return new NoiseScopeError('incomplete-step', `step ${step}: ${why}: the step is excluded`);
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

/** The k×k diagonal block of an n×n row-major matrix starting at (start, start). */
function block(gram: Float64Array, n: number, start: number, k: number): Float64Array {
  const out = new Float64Array(k * k);
  for (let i = 0; i < k; i++) for (let j = 0; j < k; j++) out[i * k + j] = gram[(start + i) * n + start + j] as number;
  return out;
}
