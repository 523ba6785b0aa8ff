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

export type TestDtype = 'DTYPE_F32' | 'DTYPE_F16' | 'DTYPE_BF16';

/** float32 values as wire bytes; fp16/bf16 only for values they hold exactly (a test's data is chosen so). */
export function encodeDense(values: Float32Array, dtype: TestDtype): Buffer {
  if (dtype === 'DTYPE_F32') return Buffer.from(values.buffer, values.byteOffset, values.byteLength);
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const b = bits[i]!;
    out[i] = dtype === 'DTYPE_BF16' ? b >>> 16 : float32BitsToExactFloat16(b);
    if (dtype === 'DTYPE_BF16' && (b & 0xffff) !== 0) throw new RangeError(`${values[i]} is not exact in bf16`);
  }
  return Buffer.from(out.buffer);
}

function float32BitsToExactFloat16(b: number): number {
  const sign = (b >>> 16) & 0x8000;
  if ((b & 0x7fffffff) === 0) return sign;
  const exponent = ((b >>> 23) & 0xff) - 127 + 15;
  if (exponent < 1 || exponent > 30 || (b & 0x1fff) !== 0) throw new RangeError(`float32 bits ${b.toString(16)} are not an exact normal fp16`);
  return sign | (exponent << 10) | ((b >>> 13) & 0x3ff);
}

export interface DenseStepOptions {
  readonly examples?: number;
  /** Elements per chunk (every micro-batch cut the same way); default 1000, so layers split unevenly. */
  readonly chunk?: number;
  readonly dtype?: TestDtype;
  readonly lr?: number;
}

/**
 * A dense step: gradients[j][l] is micro-batch j's contribution to layer l. Micro-batch by micro-batch
 * (as backward hooks fire), each layer in chunks, then a StepEnd without norms (the sidecar has the Gram).
 */
export function denseStep(step: number, gradients: readonly (readonly Float32Array[])[], options: DenseStepOptions = {}): RankMessage[] {
  const { examples = 16, chunk = 1000, dtype = 'DTYPE_F32', lr = 0.1 } = options;
  const k = gradients.length;
  const messages: RankMessage[] = [];
  gradients.forEach((layers, microBatch) => {
    layers.forEach((values, layer) => {
      for (let offset = 0; offset < values.length; offset += chunk) {
        const data = encodeDense(values.subarray(offset, Math.min(values.length, offset + chunk)), dtype);
        messages.push({ shard: { step, microBatch, examples, layer, microBatches: k, dense: { offset, dtype, data } } });
      }
    });
  });
  messages.push({ stepEnd: { step, microBatches: k, localExamples: examples * k, globalExamples: examples * k, lr, loss: Number.NaN } });
  return messages;
}

/** The norms-mode messages for the same gradients: |h_j|² per layer and |Σ_j h_j|², in float64. */
export function normsStepOf(step: number, gradients: readonly (readonly Float32Array[])[], examples = 16): RankMessage[] {
  const sq = (v: ArrayLike<number>) => Array.prototype.reduce.call(v, (s: number, x: number) => s + x * x, 0) as number;
  const micro = gradients.map((layers) => layers.map(sq));
  const accumulated = (gradients[0] ?? []).map((first, layer) => {
    const sum = new Float64Array(first.length);
    for (const layers of gradients) layers[layer]!.forEach((x, e) => (sum[e] = sum[e]! + x));
    return sq(sum);
  });
  return accumulationStep(step, micro, accumulated, examples);
}
