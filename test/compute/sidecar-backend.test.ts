import { firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { startSidecar } from '../../src/index.js';
import type { BackendName } from '../../src/compute/backends.js';

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

  it('rejects an unknown name before binding, listing the choices', async () => {
    await expect(startSidecar({ port: 0, backend: 'cuda' as BackendName })).rejects.toThrow(/unknown compute backend 'cuda': choose one of wasm-simd, wasm-simd-threads, js-unrolled, .*reference/);
  });
});
