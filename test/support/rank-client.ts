// A raw gRPC client for the sidecar, speaking the proto directly (as any
// third-party hook would). Used by the transport tests against a real sidecar.
import * as grpc from '@grpc/grpc-js';
import { loadProto } from '../../src/transport/proto.js';
import type { NoiseScopeClient } from '../../src/transport/generated/noisescope/v1/NoiseScope.js';
import type { RankMessage } from '../../src/transport/generated/noisescope/v1/RankMessage.js';
import type { SidecarMessage__Output } from '../../src/transport/generated/noisescope/v1/SidecarMessage.js';
import type { Hello } from '../../src/transport/generated/noisescope/v1/Hello.js';
import type { CompletedStep } from '../../src/ingest/completed-step.js';

export function connect(address: string): NoiseScopeClient {
  const Service = loadProto().noisescope.v1.NoiseScope;
  return new Service(address, grpc.credentials.createInsecure());
}

export const LAYERS = [
  { name: 'fc1.weight', numel: 8192, kind: 'Linear' },
  { name: 'fc1.bias', numel: 128, kind: 'Linear' },
  { name: 'fc2.weight', numel: 1280, kind: 'Linear' },
];

export function hello(overrides: Partial<Hello> = {}): RankMessage {
  return {
    hello: {
      protocolVersion: 1,
      run: 'test-run',
      rank: 0,
      worldSize: 1,
      layers: LAYERS,
      mode: 'MODE_NORMS',
      every: 1,
      ...overrides,
    },
  };
}

/** An Attach stream that records every message and the final status. */
export class RankStream {
  readonly received: SidecarMessage__Output[] = [];
  status: grpc.StatusObject | null = null;
  private readonly call: grpc.ClientDuplexStream<RankMessage, SidecarMessage__Output>;

  constructor(client: NoiseScopeClient) {
    this.call = client.Attach();
    this.call.on('data', (m: SidecarMessage__Output) => this.received.push(m));
    this.call.on('status', (s: grpc.StatusObject) => (this.status = s));
    this.call.on('error', () => {}); // the status event carries it
  }

  send(message: RankMessage): void {
    this.call.write(message);
  }

  end(): void {
    this.call.end();
  }

  refusals() {
    return this.received.flatMap((m) => (m.refusal ? [m.refusal] : []));
  }

  recommendations() {
    return this.received.flatMap((m) => (m.recommendation ? [m.recommendation] : []));
  }
}

/** Shards and StepEnd for one accumulation step with per-layer norms. */
export function accumulationStep(
  step: number,
  micro: number[][],
  accumulated: number[],
  examples = 16,
): RankMessage[] {
  return [
    ...micro.map((values, i): RankMessage => ({
      shard: { step, microBatch: i, examples, sqNorms: { values } },
    })),
    {
      stepEnd: {
        step,
        microBatches: micro.length,
        localExamples: examples * micro.length,
        globalExamples: examples * micro.length,
        accumulatedSqNorms: accumulated,
        lr: 0.1,
        loss: Number.NaN,
      },
    },
  ];
}

/** Shards and StepEnd for one micro-batch step of the per-example source: norms, per-example sums, the same accumulated norms. */
export function perExampleStep(step: number, sqNorms: number[], sums: number[], examples = 16): RankMessage[] {
  const [shard, stepEnd] = accumulationStep(step, [sqNorms], sqNorms, examples);
  return [{ shard: { ...shard!.shard, perExample: { sums } } }, stepEnd!];
}

/**
 * What rank `rank` sends for one step simulated by src/bench/synthetic-gradients.ts
 * (known |G|² and tr(Σ)): its micro-batch shards, then its StepEnd.
 */
export function syntheticStepMessages(step: CompletedStep, rank: number, lr = 0.1): RankMessage[] {
  const mine = step.ranks.find((r) => r.rank === rank);
  if (!mine) throw new RangeError(`the simulated step ${step.step} has no rank ${rank}`);
  return [
    ...mine.microSqNorms.map((values, i): RankMessage => {
      const sums = mine.microExampleSqNormSums?.[i];
      return {
        shard: {
          step: step.step,
          microBatch: i,
          examples: mine.microExamples[i]!,
          sqNorms: { values: [...values] },
          ...(sums ? { perExample: { sums: [...sums] } } : {}),
        },
      };
    }),
    {
      stepEnd: {
        step: step.step,
        microBatches: mine.microSqNorms.length,
        localExamples: mine.microExamples.reduce((a, b) => a + b, 0),
        globalExamples: step.globalExamples,
        accumulatedSqNorms: [...mine.accumulatedSqNorms],
        reducedSqNorms: mine.reducedSqNorms ? [...mine.reducedSqNorms] : [],
        lr,
        loss: Number.NaN,
      },
    },
  ];
}
