// Benchmark: step end → StepStats on stats$, over real gRPC on loopback, in
// norms mode. Closed loop: each step is sent when the previous one came out.
import * as grpc from '@grpc/grpc-js';
import { firstValueFrom, filter } from 'rxjs';
import { startSidecar } from '../sidecar.js';
import { loadProto } from '../transport/proto.js';
import type { RankMessage } from '../transport/generated/noisescope/v1/RankMessage.js';

export interface LatencyReport {
  readonly steps: number;
  readonly layers: number;
  readonly microBatches: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
}

function quantile(sorted: readonly number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] as number;
}

export async function runStepLatency(steps = 2000, layers = 100, microBatches = 4): Promise<LatencyReport> {
  const sidecar = await startSidecar({ port: 0 });
  const Service = loadProto().noisescope.v1.NoiseScope;
  const client = new Service(sidecar.address, grpc.credentials.createInsecure());
  const call = client.Attach();
  call.on('data', () => {});
  call.on('error', () => {});
  try {
    call.write({
      hello: {
        protocolVersion: 1,
        run: 'latency',
        worldSize: 1,
        every: 1,
        layers: Array.from({ length: layers }, (_, i) => ({ name: `layer${i}`, numel: 1000, kind: 'Linear' })),
      },
    });
    const latencies: number[] = [];
    for (let step = 0; step < steps; step++) {
      const out = firstValueFrom(sidecar.stats$.pipe(filter((s) => s.step === step)));
      const micro = Array.from({ length: microBatches }, () => Array.from({ length: layers }, () => 1 + Math.random()));
      for (let i = 0; i < microBatches; i++) {
        call.write({ shard: { step, microBatch: i, examples: 16, sqNorms: { values: micro[i] as number[] } } } satisfies RankMessage);
      }
      const t0 = performance.now();
      call.write({
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
    const sorted = latencies.slice(steps / 10).sort((a, b) => a - b); // first 10%: warm-up
    return {
      steps,
      layers,
      microBatches,
      p50Ms: quantile(sorted, 0.5),
      p99Ms: quantile(sorted, 0.99),
      maxMs: sorted.at(-1) as number,
    };
  } finally {
    call.end();
    client.close();
    await sidecar.close();
  }
}

export function formatLatency(r: LatencyReport): string {
  return (
    `step end → stats$ over gRPC loopback (norms mode, ${r.layers} layers, ${r.microBatches} micro-batches, ` +
    `${r.steps} steps, client and sidecar in one process): p50 ${r.p50Ms.toFixed(2)} ms, ` +
    `p99 ${r.p99Ms.toFixed(2)} ms, max ${r.maxMs.toFixed(2)} ms (target p99 ≤ 20 ms)`
  );
}
