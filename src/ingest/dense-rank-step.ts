// One rank's dense chunks for one step: its K micro-batch contributions h_j reduced, chunk by chunk, into
// per-layer K×K Gram matrices (StepGram). At step end the Gram gives what norms mode sends, so the step
// joins the same estimator path: |h_j|² = G_jj and |Σ_j h_j|² = Σ_ij G_ij.
import type { ReductionBackend } from '../compute/reduction-backend.js';
import { StepGram, type BlockAccounting } from '../compute/step-gram.js';
import { NoiseScopeError } from '../errors.js';
import { gradientDiversity } from '../stats/gradient-diversity.js';
import type { GradientDiversity } from '../types.js';
import type { RunLayout } from './run-layout.js';

/** Default bytes of dense data the sidecar may hold for steps not yet complete (blocks and Gram matrices), over all runs. */
export const DENSE_BUDGET_BYTES = 1024 ** 3;

/**
 * Bytes held for incomplete dense steps against the sidecar's one limit over all runs. Each run holds a share()
 * that counts its own bytes and reserves against the whole, so one run's steps can crowd out another's, never the host.
 */
export class ByteBudget implements BlockAccounting {
  held = 0;
  constructor(
    readonly limit: number,
    private readonly whole: ByteBudget | null = null,
  ) {}
  /** A run's part of this budget: its own bytes, counted in this one too. */
  share(): ByteBudget {
    return new ByteBudget(this.limit, this);
  }
  allocated(bytes: number): void {
    this.held += bytes;
    this.whole?.allocated(bytes);
  }
  released(bytes: number): void {
    this.held -= bytes;
    this.whole?.released(bytes);
  }
  /** Throws a limit-exceeded error naming the limit unless `bytes` more fit in the whole budget. */
  reserve(bytes: number, where: string): void {
    const whole = this.whole ?? this;
    if (whole.held + bytes <= whole.limit) return;
    throw new NoiseScopeError(
      'limit-exceeded',
      `${where}: would hold ${formatBytes(whole.held + bytes)} of dense data for incomplete steps, over the limit of ${formatBytes(whole.limit)} shared by all runs ` +
        `(this run holds ${formatBytes(this.held)}; raise it with startSidecar({ denseBudgetBytes })): the step is excluded`,
    );
  }
}

/** What a complete dense step gives the assembler: norms-mode figures plus the Gram-only ones. */
export interface DenseStepFigures {
  readonly microSqNorms: number[][];
  readonly microExamples: number[];
  readonly accumulatedSqNorms: number[];
  readonly diversity: GradientDiversity;
}

export class DenseRankStep {
  /** The first reason this step cannot count; its memory is released when it is set. */
  failure: NoiseScopeError | null = null;
  private readonly gram: StepGram;
  private readonly microExamples: (number | undefined)[];
  private readonly gramBytes: number;
  private reductions: Promise<void> = Promise.resolve();
  private released = false;

  constructor(
    backend: ReductionBackend,
    readonly microBatches: number,
    private readonly layout: RunLayout,
    private readonly budget: ByteBudget,
    where: string,
  ) {
    this.gramBytes = layout.layers.length * microBatches * microBatches * 8;
    budget.reserve(this.gramBytes, where);
    budget.allocated(this.gramBytes);
    this.gram = new StepGram(backend, microBatches, layout.layers.map((l) => l.numel), budget);
    this.microExamples = new Array<number | undefined>(microBatches);
  }

  /** Takes one chunk (already converted to float32); throws a NoiseScopeError saying why not. */
  add(microBatch: number, examples: number, layer: number, offset: number, values: Float32Array, where: string): void {
    const known = this.microExamples[microBatch];
    if (known !== undefined && known !== examples) {
      throw new NoiseScopeError('invalid-message', `${where}: examples ${examples}, but earlier chunks of this micro-batch said ${known}`);
    }
    this.budget.reserve(this.gram.bytesToAccept(layer, offset, values.length), where);
    let reduced: Promise<void>;
    try {
      reduced = this.gram.accept({ gradient: microBatch, layer, offset, values });
    } catch (error) {
      const message = (error as Error).message;
      throw new NoiseScopeError(/already sent|repeats/.test(message) ? 'duplicate' : 'invalid-message', `${where}: ${message}`);
    }
    this.microExamples[microBatch] = examples;
    // A failed reduction fails the step (reported at its end), never the stream.
    const settled = reduced.catch((error: unknown) => {
      this.fail(new NoiseScopeError('internal', `reduction failed: ${(error as Error).message ?? String(error)}`));
    });
    this.reductions = Promise.all([this.reductions, settled]).then(() => {});
  }

  /** Resolves once every reduction started so far has finished. */
  settled(): Promise<void> {
    return this.reductions;
  }

  /** Marks the step failed (the first reason wins) and frees what it holds. */
  fail(error: NoiseScopeError): void {
    this.failure ??= error;
    this.release();
  }

  /** Frees the pending blocks and the Gram matrices' budget; safe twice. */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.gram.release();
    this.budget.released(this.gramBytes);
  }

  /** The step's figures, or why it cannot count (missing chunks, non-finite values); call after settled(). */
  finish(rank: number, step: number, declaredMicroBatches: number): DenseStepFigures | NoiseScopeError {
    if (this.failure) return this.failure;
    const k = this.microBatches;
    const excluded = (why: string) => new NoiseScopeError('incomplete-step', `step ${step}: ${why}: the step is excluded`);
    if (declaredMicroBatches !== k) return excluded(`StepEnd declares ${declaredMicroBatches} micro-batches, its dense chunks ${k}`);
    const silent = [...this.microExamples.keys()].filter((i) => this.microExamples[i] === undefined);
    if (silent.length > 0) return excluded(`micro-batch(es) ${silent.join(', ')} of ${k} sent no dense chunk`);
    const grams = this.grams(step);
    if (grams instanceof NoiseScopeError) return grams;
    const figures: DenseStepFigures = {
      microSqNorms: Array.from({ length: k }, (_, i) => grams.map((g) => g[i * k + i] as number)),
      microExamples: this.microExamples as number[],
      accumulatedSqNorms: grams.map((g) => g.reduce((sum, v) => sum + v, 0)),
      diversity: gradientDiversity(rank, grams, k),
    };
    this.release();
    return figures;
  }

  /** Examples behind each gradient so far (undefined: none of its chunks came). */
  get examples(): readonly (number | undefined)[] {
    return this.microExamples;
  }

  /** The layers' K×K Grams once every chunk is reduced, or why the step cannot count; `name(i)` names gradient i. */
  grams(step: number, name = (i: number) => `micro-batch ${i}`): Float64Array[] | NoiseScopeError {
    if (this.failure) return this.failure;
    const k = this.microBatches;
    if (!this.gram.isComplete()) return new NoiseScopeError('incomplete-step', `step ${step}: dense chunks are missing: ${this.gaps()}: the step is excluded`);
    const grams = this.layout.layers.map((_, l) => this.gram.gram(l));
    for (let l = 0; l < grams.length; l++) {
      for (let i = 0; i < k; i++) {
        if (!Number.isFinite(grams[l]![i * k + i]!)) {
          return new NoiseScopeError(
            'invalid-message',
            `step ${step}: ${name(i)} sent non-finite values in layer '${this.layout.layers[l]?.name}' (report a non-finite gradient as StepEnd.skipped): the step is excluded`,
          );
        }
      }
    }
    return grams;
  }

  /** Which layers are not fully reduced, e.g. "layer 'fc1.weight' has 4096 of 8192 elements from every micro-batch". */
  private gaps(): string {
    const parts: string[] = [];
    this.layout.layers.forEach((layer, l) => {
      const done = this.gram.reducedElements(l);
      if (done !== layer.numel) parts.push(`layer '${layer.name}' has ${done} of ${layer.numel} elements from every micro-batch`);
    });
    return parts.length > 3 ? `${parts.slice(0, 3).join('; ')}; and ${parts.length - 3} more layers` : parts.join('; ');
  }
}

function formatBytes(bytes: number): string {
  return bytes >= 1024 ** 2 ? `${(bytes / 1024 ** 2).toFixed(1)} MiB` : `${bytes} bytes`;
}
