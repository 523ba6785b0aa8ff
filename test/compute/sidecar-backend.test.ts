import { filter, firstValueFrom, take, toArray } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { startSidecar } from '../../src/index.js';
import type { BackendName } from '../../src/compute/backends.js';
import { microGradients } from '../support/dense-gradients.js';
import { connect, denseStep, hello, normsStepOf, RankStream } from '../support/rank-client.js';

describe('the sidecar’s compute backend', () => {
  it('is chosen by the start-up probe and named on health$ with its throughput', async () => {
    const sidecar = await startSidecar({ port: 0 });
    try {
      const report = sidecar.computeBackend;
      expect(report.forced).toBe(false);
      expect(report.candidates.find((c) => c.verdict === 'chosen')?.name).toBe(report.chosen);
      const health = await firstValueFrom(sidecar.health$);
      expect(health.computeBackend).toMatch(new RegExp(`^${report.chosen} \\(probe [\\d.]+ GB/s Gram(; next \\S+ [\\d.]+)?\\)$`));
    } finally {
      await sidecar.close();
    }
  });

  it('is the forced one with backend: NAME, its mode on health$', async () => {
    const sidecar = await startSidecar({ port: 0, backend: 'reference' });
    try {
      expect(sidecar.computeBackend).toMatchObject({ chosen: 'reference', forced: true });
      expect(sidecar.computeBackend.candidates.map((c) => c.name)).toEqual(['reference']);
      expect((await firstValueFrom(sidecar.health$)).computeBackend).toMatch(/^reference \(forced, [\d.]+ GB\/s Gram: plain JavaScript/);
    } finally {
      await sidecar.close();
    }
  });

  it('runs a forced wasm-simd-threads end to end: dense shards over gRPC, split across threads, give what norms mode gives', async () => {
    const sidecar = await startSidecar({ port: 0, backend: 'wasm-simd-threads' });
    const client = connect(sidecar.address);
    try {
      expect(sidecar.computeBackend).toMatchObject({ chosen: 'wasm-simd-threads', forced: true });
      expect((await firstValueFrom(sidecar.health$)).computeBackend).toMatch(/^wasm-simd-threads \(forced, [\d.]+ GB\/s Gram: \d+ threads? /);
      // K = 4 chunks of 64 Ki floats: 10 pairs × 65536 products per block, over the threads' split threshold.
      const k = 4, layers = [{ name: 'wide', numel: 300_007, kind: 'Linear' }];
      const steps = (run: string) => firstValueFrom(sidecar.stats$.pipe(filter((s) => s.run === run), take(2), toArray()));
      const [dense, norms] = [steps('dense-run'), steps('norms-run')];
      const d = new RankStream(client), n = new RankStream(client);
      d.send(hello({ run: 'dense-run', mode: 'MODE_DENSE', layers }));
      n.send(hello({ run: 'norms-run', layers }));
      for (let step = 0; step < 2; step++) {
        const gradients = microGradients(step + 1, k, [300_007], { signal: 0.3, noise: 1 });
        for (const m of denseStep(step, gradients, { chunk: 1 << 16 })) d.send(m);
        for (const m of normsStepOf(step, gradients)) n.send(m);
      }
      const [denseStats, normsStats] = [await dense, await norms];
      expect(d.refusals()).toEqual([]);
      denseStats.forEach((s, i) => {
        const want = normsStats[i]?.raw?.bSimple as number;
        expect(Math.abs((s.raw?.bSimple as number) - want) / Math.abs(want)).toBeLessThan(1e-6);
      });
      d.end();
      n.end();
    } finally {
      client.close();
      await sidecar.close();
    }
  });

  it('rejects an unknown name before binding, listing the choices', async () => {
    await expect(startSidecar({ port: 0, backend: 'cuda' as BackendName })).rejects.toThrow(/unknown compute backend 'cuda': choose one of wasm-simd, wasm-simd-threads, js-unrolled, .*reference/);
  });
});
