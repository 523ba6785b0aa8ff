// The work loop every thread of wasm-simd-threads runs, the calling thread and the workers alike:
// claim the next chunk with Atomics.add on a shared counter, compute it into that chunk's own slot,
// until none is left. Threads that run faster (or are not preempted by other processes) take more
// chunks, and since each chunk's result has its own slot and the slots are added in chunk order,
// the result is the same bit for bit whichever thread computed which chunk, and for any thread count.
// Self-contained functions (parameters and globals only): the workers run their source.
import type { GradientBlock } from './reduction-backend.js';
import type { SimdExports } from './wasm-simd-module.js';
import type { gramPairs, TileAreas, WasmViews } from './wasm-simd-backend.js';

/** A Gram pass split in chunks of whole tiles: chunk c covers columns [bound(c), bound(c + 1)). */
export interface GramChunks {
  readonly block: GradientBlock;
  readonly tile: number;
  readonly chunks: number;
  /** Byte address of chunk 0's pair sums; chunk c's are K(K+1)/2 float64 further on per chunk. */
  readonly slots: number;
}

/** Columns where chunk c starts (c = chunks: the row's end). */
export function chunkStart(length: number, tile: number, chunks: number, c: number): number {
  return Math.min(length, Math.floor((c * Math.ceil(length / tile)) / chunks) * tile);
}

export function claimGramChunks(pairsOf: typeof gramPairs, start: typeof chunkStart, simd: SimdExports, views: WasmViews, areas: TileAreas, counter: Int32Array, work: GramChunks): void {
  const { block, tile, chunks, slots } = work;
  const count = (block.gradients * (block.gradients + 1)) / 2;
  for (let c = Atomics.add(counter, 0, 1); c < chunks; c = Atomics.add(counter, 0, 1)) {
    const pairs = views.doubles(slots + c * count * 8, count).fill(0);
    pairsOf(simd, views, areas, block, true, tile, start(block.length, tile, chunks, c), start(block.length, tile, chunks, c + 1), pairs);
  }
}

/** Σx² (kernel 0: sumsq) or the float32-lane Σx (kernel 1: readsum, the bandwidth probe) of
 *  `strides` × 16 floats at `values` in chunks; chunk c's sum goes to the float64 at slots + 8c. */
export function claimSquareChunks(simd: SimdExports, views: WasmViews, counter: Int32Array, values: number, strides: number, chunks: number, slots: number, kernel: number): void {
  const sum = kernel === 1 ? simd.readsum : simd.sumsq;
  for (let c = Atomics.add(counter, 0, 1); c < chunks; c = Atomics.add(counter, 0, 1)) {
    const from = Math.floor((c * strides) / chunks) * 16, to = Math.floor(((c + 1) * strides) / chunks) * 16;
    views.doubles(slots + c * 8, 1)[0] = sum(values + from * 4, to - from);
  }
}
