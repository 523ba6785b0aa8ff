// Known micro-batch gradient contributions for dense-mode tests: h_j = signal + noise_j per layer, seeded.

/** mulberry32: a small seeded generator, so every run of a test sends the same bytes. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface GradientOptions {
  readonly signal?: number;
  readonly noise?: number;
  /** Round every value to a multiple of 1/16 within ±7.9: exact in fp16 and bf16 alike. */
  readonly halfExact?: boolean;
}

/** gradients[j][l] for K micro-batches over layers of the given sizes. */
export function microGradients(seed: number, k: number, sizes: readonly number[], options: GradientOptions = {}): Float32Array[][] {
  const { signal = 1, noise = 1, halfExact = false } = options;
  const random = seeded(seed);
  const uniform = () => 2 * random() - 1;
  const signals = sizes.map((n) => Float64Array.from({ length: n }, () => signal * uniform()));
  const round = (x: number) => (halfExact ? Math.max(-127, Math.min(127, Math.round(x * 16))) / 16 : x);
  return Array.from({ length: k }, () => signals.map((g) => Float32Array.from(g, (x) => round(x + noise * uniform()))));
}
