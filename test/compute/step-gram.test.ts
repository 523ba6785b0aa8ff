import { describe, expect, it } from 'vitest';
import { createWasmSimdBackend } from '../../src/compute/wasm-simd-backend.js';
import { StepGram } from '../../src/compute/step-gram.js';
import { gramError } from '../../src/compute/probe-data.js';
import { expectedFor, randomBlock } from './check-backend.js';

describe('StepGram', () => {
  it('builds each layer\'s Gram from chunks in any order, holding only ranges still waiting', async () => {
    const k = 3, sizes = [10, 2500];
    const layers = sizes.map((n, layer) => randomBlock(k, n, 40 + layer));
    const chunks = sizes.flatMap((n, layer) =>
      [0, 1000, 2000].filter((o) => o < n).flatMap((offset) => [2, 0, 1].map((gradient) => {
        const end = Math.min(n, offset + 1000);
        return { gradient, layer, offset, values: (layers[layer] as Float32Array).slice(gradient * n + offset, gradient * n + end) };
      })));
    const step = new StepGram(createWasmSimdBackend(), k, sizes);
    let most = 0;
    for (const chunk of chunks) {
      await step.add(chunk);
      most = Math.max(most, step.pendingRanges);
    }
    expect(most).toBe(1); // gradients of a range arrive together here: one open block at a time
    expect(step.isComplete()).toBe(true);
    for (const [layer, n] of sizes.entries()) {
      const expected = await expectedFor(layers[layer] as Float32Array, k, n);
      expect(gramError(step.gram(layer), expected.gram, k)).toBeLessThan(1e-12);
    }
  });

  it('refuses chunks that do not fit, repeat, or disagree in length; release() frees open ranges', async () => {
    const step = new StepGram(createWasmSimdBackend(), 2, [100]);
    const chunk = (gradient: number, offset: number, length: number) => ({ gradient, layer: 0, offset, values: new Float32Array(length) });
    await expect(step.add({ ...chunk(0, 0, 10), layer: 1 })).rejects.toThrow(/layer 1/);
    await expect(step.add(chunk(2, 0, 10))).rejects.toThrow(/gradient 2/);
    await expect(step.add(chunk(0, 95, 10))).rejects.toThrow(/does not fit/);
    await step.add(chunk(0, 0, 10));
    await expect(step.add(chunk(0, 0, 10))).rejects.toThrow(/already sent/);
    await expect(step.add(chunk(1, 0, 11))).rejects.toThrow(/11 elements/);
    expect(step.isComplete()).toBe(false);
    step.release();
    expect(step.pendingRanges).toBe(0);
  });
});
