// Shared by the backend tests: run a backend on a block and compare with the reference.
import { expect } from 'vitest';
import { BACKEND_NAMES, createBackend, type BackendName } from '../../src/compute/backends.js';
import { fillUniform, gramError } from '../../src/compute/probe-data.js';
import type { ReductionBackend } from '../../src/compute/reduction-backend.js';
import { createReferenceBackend } from '../../src/compute/reference-backend.js';

/**
 * Tolerances, as gramError (|Δ| relative to √(G_ii G_jj)) and relative error of Σx²:
 * float64 backends differ from the reference only in summation order of exact products
 * (≲ n · 2^-53 ≈ 2e-9 at 17M, far less in practice); gpu.js sums 256 float32 products per
 * span (≤ 256 · 2^-24 ≈ 1.5e-5).
 */
export function tolerance(name: string): number {
  return name.startsWith('gpujs-') ? 2e-5 : 1e-10;
}

/** gpu.js modes this machine lacks reject with gpu.js's own message; nothing else may fail. */
export async function openBackend(name: BackendName): Promise<ReductionBackend | undefined> {
  try {
    return await createBackend(name);
  } catch (error) {
    expect(name.startsWith('gpujs-'), `${name} failed: ${(error as Error).message}`).toBe(true);
    expect((error as Error).message).toMatch(/not supported/);
    return undefined;
  }
}

export const ALL_BACKENDS: readonly BackendName[] = BACKEND_NAMES;

export interface Expected {
  readonly gram: Float64Array;
  readonly squares: number;
}

export async function expectedFor(values: Float32Array, gradients: number, length: number): Promise<Expected> {
  const reference = createReferenceBackend();
  const gram = new Float64Array(gradients * gradients);
  await reference.addGram({ gradients, length, values }, gram);
  return { gram, squares: await reference.sumOfSquares(values) };
}

/** Fills a block the backend allocates, then checks addGram (added to a non-zero start) and
 *  sumOfSquares of the whole block, or of row 0 when `squaresOfRow0` (its expected Σx² is gram[0]). */
export async function checkAgainstReference(backend: ReductionBackend, values: Float32Array, gradients: number, length: number, expected: Expected, squaresOfRow0 = false): Promise<void> {
  const block = backend.allocateBlock(gradients, length);
  try {
    block.values.set(values);
    const gram = new Float64Array(gradients * gradients).fill(1); // addGram adds: start from ones
    await backend.addGram(block, gram);
    const added = gram.map((g) => g - 1);
    expect(gramError(added, expected.gram, gradients), `${backend.name} Gram K=${gradients} n=${length}`).toBeLessThanOrEqual(tolerance(backend.name));
    const squares = await backend.sumOfSquares(squaresOfRow0 ? block.values.subarray(0, length) : block.values);
    const want = squaresOfRow0 ? (expected.gram[0] as number) : expected.squares;
    expect(Math.abs(squares - want), `${backend.name} Σx²`).toBeLessThanOrEqual(tolerance(backend.name) * want);
  } finally {
    block.release();
  }
}

export function randomBlock(gradients: number, length: number, seed: number): Float32Array {
  return fillUniform(new Float32Array(gradients * length), seed);
}
