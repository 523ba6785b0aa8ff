// A run whose gradients have a known noise scale, simulated step by step with
// src/bench/synthetic-gradients.ts and sent over the wire by test/support/rank-client.ts.
import { gaussianGradients, SeededRandom, simulateSyntheticStep } from '../../src/bench/synthetic-gradients.js';
import type { CompletedStep } from '../../src/ingest/completed-step.js';
import type { RankMessage } from '../../src/transport/generated/noisescope/v1/RankMessage.js';
import { hello, syntheticStepMessages } from './rank-client.js';

export interface SyntheticRunOptions {
  readonly run: string;
  /** The true B_simple = tr(Σ)/|G|². */
  readonly bSimple: number;
  /** Examples per micro-batch, per rank: [[16, 16], [16, 16]] is two ranks of two micro-batches. */
  readonly microExamples: readonly (readonly number[])[];
  readonly seed: number;
  /** Send per-example sums with every shard (the per-example source; default false). */
  readonly perExample?: boolean;
  /** Declared in the Hello as parameters the hook does not cover. */
  readonly uncoveredLayers?: readonly { readonly name: string; readonly numel: number; readonly kind: string }[];
}

export class SyntheticRun {
  readonly run: string;
  readonly worldSize: number;
  private readonly random: SeededRandom;
  private readonly source: ReturnType<typeof gaussianGradients>;
  private readonly microExamples: readonly (readonly number[])[];
  private readonly perExample: boolean;
  private readonly uncoveredLayers: SyntheticRunOptions['uncoveredLayers'];
  /** Every step simulated so far, as the sidecar should assemble it. */
  readonly steps: CompletedStep[] = [];

  constructor(options: SyntheticRunOptions) {
    this.run = options.run;
    this.worldSize = options.microExamples.length;
    this.microExamples = options.microExamples;
    this.perExample = options.perExample ?? false;
    this.uncoveredLayers = options.uncoveredLayers;
    this.random = new SeededRandom(options.seed);
    this.source = gaussianGradients(this.random, [{ name: 'w', numel: 256, gradSqNorm: 1, bSimple: options.bSimple }]);
  }

  hello(rank: number, session = `${this.run}-${rank}`): RankMessage {
    return hello({
      run: this.run,
      rank,
      worldSize: this.worldSize,
      layers: [...this.source.layers],
      session,
      optimizer: 'SGD',
      ...(this.uncoveredLayers ? { uncoveredLayers: this.uncoveredLayers.map((l) => ({ ...l })) } : {}),
    });
  }

  /** Rank `rank`'s messages for step `step` (each step is simulated once, for every rank). */
  messages(step: number, rank: number): RankMessage[] {
    while (this.steps.length <= step) {
      this.steps.push(
        simulateSyntheticStep(this.random, this.source, { name: this.run, microExamples: this.microExamples, allReduce: this.worldSize > 1, perExample: this.perExample }, this.steps.length),
      );
    }
    return syntheticStepMessages(this.steps[step]!, rank);
  }
}
