// Benchmark: step end → StepStats on stats$, and step end → Recommendation on
// recommendations$ (and on the rank's own Attach stream), over real gRPC on
// loopback, in norms mode. Closed loop: each step is sent when the previous one came out.
import * as grpc from '@grpc/grpc-js';
import { firstValueFrom, filter } from 'rxjs';
import { startSidecar, type Sidecar } from '../sidecar.js';
import { loadProto } from '../transport/proto.js';
import type { RankMessage } from '../transport/generated/noisescope/v1/RankMessage.js';
import type { SidecarMessage__Output } from '../transport/generated/noisescope/v1/SidecarMessage.js';
import type { LayerInfo } from '../types.js';
import { gaussianGradients, SeededRandom, simulateSyntheticStep, type SyntheticGradients } from './synthetic-gradients.js';

export interface Distribution {
  readonly samples: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
}

export interface LatencyReport extends Distribution {
  readonly steps: number;
  readonly layers: number;
  readonly microBatches: number;
}

function quantile(sorted: readonly number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] as number;
}

function distribution(latencies: readonly number[]): Distribution {
  const sorted = [...latencies].sort((a, b) => a - b);
  return { samples: sorted.length, p50Ms: quantile(sorted, 0.5), p99Ms: quantile(sorted, 0.99), maxMs: sorted.at(-1) ?? Number.NaN };
}

/** One rank's raw Attach stream (the proto spoken directly), announced with Hello. */
function attachRank(sidecar: Sidecar, run: string, layers: readonly LayerInfo[]) {
  const Service = loadProto().noisescope.v1.NoiseScope;
  const client = new Service(sidecar.address, grpc.credentials.createInsecure());
  const call = client.Attach();
  call.on('error', () => {});
  call.write({ hello: { protocolVersion: 1, run, worldSize: 1, every: 1, optimizer: 'SGD', layers: [...layers] } });
  return {
    call,
    close() {
      call.end();
      client.close();
    },
  };
}

export async function runStepLatency(steps = 2000, layers = 100, microBatches = 4): Promise<LatencyReport> {
  const sidecar = await startSidecar({ port: 0 });
  const layerInfos = Array.from({ length: layers }, (_, i) => ({ name: `layer${i}`, numel: 1000, kind: 'Linear' }));
  const rank = attachRank(sidecar, 'latency', layerInfos);
  rank.call.on('data', () => {});
  try {
    const latencies: number[] = [];
    for (let step = 0; step < steps; step++) {
      const out = firstValueFrom(sidecar.stats$.pipe(filter((s) => s.step === step)));
      const micro = Array.from({ length: microBatches }, () => Array.from({ length: layers }, () => 1 + Math.random()));
      for (let i = 0; i < microBatches; i++) {
        rank.call.write({ shard: { step, microBatch: i, examples: 16, sqNorms: { values: micro[i] as number[] } } } satisfies RankMessage);
      }
      const t0 = performance.now();
      rank.call.write({
        stepEnd: {
          step,
          microBatches,
          localExamples: 16 * microBatches,
          globalExamples: 16 * microBatches,
          accumulatedSqNorms: Array.from({ length: layers }, () => 4 + Math.random()),
        },
      });
      await out;
      latencies.push(performance.now() - t0);
    }
    return { steps, layers, microBatches, ...distribution(latencies.slice(steps / 10)) }; // first 10%: warm-up
  } finally {
    rank.close();
    await sidecar.close();
  }
}

export interface RecommendationLatencyReport {
  readonly steps: number;
  readonly layers: number;
  /** Step end → the Recommendation on the sidecar's recommendations$. */
  readonly observable: Distribution;
  /** Step end → the Recommendation arriving on the rank's own Attach stream. */
  readonly rank: Distribution;
  readonly batches: readonly number[];
}

const MICRO = 16;
const LR_PER_EXAMPLE = 0.1 / 64;

/**
 * A workload that keeps the policy busy: the true B_simple alternates between
 * 32 and 512 every `phase` steps, the rank applies each recommendation at the
 * next step (accumulation steps, and the learning rate by the linear rule so the
 * temperature holds), and window 1 with a short smoothing horizon lets the
 * advice follow within a few steps. Synthetic gradients with known G and Σ.
 */
export async function runRecommendationLatency(steps = 2000, layers = 100, phase = 40): Promise<RecommendationLatencyReport> {
  const sidecar = await startSidecar({ port: 0, smoothing: { beta: 0.9 }, policy: { window: 1 } });
  const random = new SeededRandom(7);
  const shape = (bSimple: number) => Array.from({ length: layers }, (_, i) => ({ name: `layer${i}`, numel: 64, gradSqNorm: 1 / layers, bSimple }));
  const sources: SyntheticGradients[] = [gaussianGradients(random, shape(512)), gaussianGradients(random, shape(32))];
  const rank = attachRank(sidecar, 'recommend-latency', sources[0]!.layers);
  // When the latest recommendation came out of recommendations$, and when it reached the rank.
  const latest = { sequence: 0, step: -1, accumulation: 0, emittedAt: 0, arrivedSequence: 0, arrivedAt: 0 };
  rank.call.on('data', (m: SidecarMessage__Output) => {
    if (!m.recommendation) return;
    latest.arrivedSequence = Number(m.recommendation.sequence);
    latest.arrivedAt = performance.now();
  });
  const watching = sidecar.recommendations$.subscribe((r) => {
    Object.assign(latest, { sequence: r.sequence, step: r.step, accumulation: r.accumulationSteps, emittedAt: performance.now() });
  });
  try {
    const observable: number[] = [];
    const atRank: number[] = [];
    const batches: number[] = [];
    let accumulation = 4;
    for (let step = 0; step < steps; step++) {
      const source = sources[Math.floor(step / phase) % 2]!;
      const simulated = simulateSyntheticStep(random, source, { name: 'bench', microExamples: [Array(accumulation).fill(MICRO)], allReduce: false }, step);
      const mine = simulated.ranks[0]!;
      mine.microSqNorms.forEach((values, i) =>
        rank.call.write({ shard: { step, microBatch: i, examples: MICRO, sqNorms: { values: [...values] } } } satisfies RankMessage),
      );
      const out = firstValueFrom(sidecar.stats$.pipe(filter((s) => s.step === step)));
      const t0 = performance.now();
      rank.call.write({
        stepEnd: {
          step,
          microBatches: accumulation,
          localExamples: simulated.globalExamples,
          globalExamples: simulated.globalExamples,
          accumulatedSqNorms: [...mine.accumulatedSqNorms],
          lr: LR_PER_EXAMPLE * simulated.globalExamples,
        },
      });
      await out;
      if (latest.step !== step) continue;
      observable.push(latest.emittedAt - t0);
      // The hook acts on what reaches it: wait for the rank's copy, then apply it at the next step.
      while (latest.arrivedSequence !== latest.sequence) await new Promise((resolve) => setImmediate(resolve));
      atRank.push(latest.arrivedAt - t0);
      accumulation = latest.accumulation;
      batches.push(accumulation * MICRO);
    }
    return { steps, layers, observable: distribution(observable), rank: distribution(atRank), batches };
  } finally {
    watching.unsubscribe();
    rank.close();
    await sidecar.close();
  }
}

const ms = (d: Distribution) => `p50 ${d.p50Ms.toFixed(2)} ms, p99 ${d.p99Ms.toFixed(2)} ms, max ${d.maxMs.toFixed(2)} ms`;

export function formatLatency(r: LatencyReport): string {
  return (
    `step end → stats$ over gRPC loopback (norms mode, ${r.layers} layers, ${r.microBatches} micro-batches, ` +
    `${r.steps} steps, client and sidecar in one process): ${ms(r)} (target p99 ≤ 20 ms)`
  );
}

export function formatRecommendationLatency(r: RecommendationLatencyReport): string {
  const distinct = [...new Set(r.batches)].sort((a, b) => a - b).join(', ');
  return [
    `step end → recommendations$ over gRPC loopback (norms mode, ${r.layers} layers, ${r.steps} steps, B_simple alternating 512/32, ` +
      `window 1, each recommendation applied at the next step; ${r.observable.samples} recommendations, batches ${distinct}): ` +
      `${ms(r.observable)} (target p99 ≤ 20 ms)`,
    `step end → the same recommendation on the rank's Attach stream: ${ms(r.rank)}`,
  ].join('\n');
}
