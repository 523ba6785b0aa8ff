// Deterministic test data for probes and benchmarks (no Math.random: a failing probe must repeat).

/** Fills `values` with uniform values in [low, high) from a seeded xorshift32 generator. */
export function fillUniform(values: Float32Array, seed: number, low = -1, high = 1): Float32Array {
  let state = seed >>> 0 || 0x9e3779b9;
  for (let i = 0; i < values.length; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    values[i] = low + ((state >>> 0) / 2 ** 32) * (high - low);
  }
  return values;
}

/**
 * Largest |gram − expected| over all entries, relative to √(expected_ii · expected_jj): the scale
 * of entry (i, j) by Cauchy–Schwarz, so a near-zero off-diagonal entry is not judged by itself.
 */
export function gramError(gram: Float64Array, expected: Float64Array, gradients: number): number {
  let worst = 0;
  for (let i = 0; i < gradients; i++) {
    for (let j = 0; j < gradients; j++) {
      const scale = Math.sqrt((expected[i * gradients + i] as number) * (expected[j * gradients + j] as number)) || 1;
      worst = Math.max(worst, Math.abs((gram[i * gradients + j] as number) - (expected[i * gradients + j] as number)) / scale);
    }
  }
  return Number.isNaN(worst) ? Infinity : worst;
}
