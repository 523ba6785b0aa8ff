import { describe, expect, it } from 'vitest';
import { fillUniform } from '../../src/compute/probe-data.js';
import { ALL_BACKENDS, checkAgainstReference, expectedFor, openBackend } from './check-backend.js';

// K = 2 rows of 2^24 + 1001 floats (134 MB): element indices past 2^24, where gpu.js reads the
// wrong element through a computed flat index, and Σx² ≈ 2.3 · 2^24 with row 0 in [1, 2), where a
// float32 running sum stalls (it stops growing at 2^24). Row 1 has random signs, so a misread
// element shows in the off-diagonal entry too.
const K = 2;
const LENGTH = 2 ** 24 + 1001;
const values = new Float32Array(K * LENGTH);
fillUniform(values.subarray(0, LENGTH), 1, 1, 2);
fillUniform(values.subarray(LENGTH), 2, -1, 1);
const expected = await expectedFor(values, K, LENGTH);

describe('vectors longer than 2^24 elements, sums beyond float32 range', () => {
  it('the data reaches past what float32 counts exactly', () => {
    expect(expected.gram[0]).toBeGreaterThan(2 * 2 ** 24);
  });

  it.each(ALL_BACKENDS.filter((name) => name !== 'reference'))('%s matches the reference', async (name) => {
    const backend = await openBackend(name);
    if (!backend) return; // a gpu.js mode this machine lacks: openBackend checked the reason
    try {
      // gpu mode that fell back to webasm compiles the very kernel gpujs-webasm runs here: saves ~1 s.
      if (name === 'gpujs-gpu' && / → webasm /.test(backend.mode)) return;
      await checkAgainstReference(backend, values, K, LENGTH, expected, true);
    } finally {
      backend.dispose();
    }
  });
});
