// The work loop every thread of wasm-simd-threads runs, the calling thread and the workers alike:
// claim the next chunk with Atomics.add on the call's counter, compute it into this thread's own
// result slot for that chunk, and publish it with a compare-exchange on the chunk's state word (the
// first finished result wins). The calling thread then computes itself every chunk still without a
// result instead of waiting for a worker pushed off its core; the kernels are deterministic, so
// whichever thread's result a chunk gets is the same bit for bit, and the chunks are added in order.
// A late worker only ever writes into its own call's area, which is not reused until it is done.
// Self-contained functions (parameters and globals only): the workers run their source.
import type { GradientBlock } from './reduction-backend.js';
import type { SimdExports } from './wasm-simd-module.js';
import type { gramPairs, TileAreas, WasmViews } from './wasm-simd-backend.js';

/** One split call's claims and results, in memory that no other call uses while any thread may still write it. */
export interface ChunkArea {
  /** Int32 0: the claim counter; 1 + c: chunk c's state, 0 until a thread publishes its result, then that thread's index + 1. */
  readonly words: Int32Array;
  readonly chunks: number;
  readonly threads: number;
  /** Float64 values in one chunk's result. */
  readonly count: number;
  /** Byte address of the results: thread t's for chunk c lies at results + (c × threads + t) × count × 8. */
  readonly results: number;
}

/** Adds chunk c into `result` (zeroed). With `taken` (the caller finishing others' chunks) it may stop
 *  early once taken() says another thread has published c; without it, it computes the chunk whole. */
export type ChunkWork = (c: number, result: Float64Array, taken?: () => boolean) => void;

/** Bytes of a call area: the state words (cache-line padded), then every thread's result slot per chunk. */
export function chunkAreaBytes(chunks: number, threads: number, count: number): number {
  return resultsOffset(chunks) + chunks * threads * count * 8;
}

/** Where a call area's results start, from its start. */
export function resultsOffset(chunks: number): number {
  return Math.ceil(((1 + chunks) * 4) / 64) * 64;
}

/** Claims chunks until none is left, publishing each; with `finish` (the calling thread) then computes
 *  every chunk still without a result. `pause` runs before each claimed chunk is computed (a test
 *  hook stalls a worker there). */
export function claimChunks(area: ChunkArea, thread: number, views: WasmViews, work: ChunkWork, pause: () => void, finish: boolean): void {
  const { words, chunks, threads, count, results } = area;
  const settle = (c: number, taken: (() => boolean) | undefined): void => {
    if (Atomics.load(words, 1 + c) !== 0) return;
    const result = views.doubles(results + (c * threads + thread) * count * 8, count).fill(0);
    work(c, result, taken);
    Atomics.compareExchange(words, 1 + c, 0, thread + 1); // fails when another thread published c first (work may then have stopped early)
  };
  for (let c = Atomics.add(words, 0, 1); c < chunks; c = Atomics.add(words, 0, 1)) {
    if (Atomics.load(words, 1 + c) !== 0) continue;
    pause();
    settle(c, undefined);
  }
  if (finish) for (let c = 0; c < chunks; c++) settle(c, () => Atomics.load(words, 1 + c) !== 0);
}

/** Columns where chunk c starts (c = chunks: the row's end). */
export function chunkStart(length: number, tile: number, chunks: number, c: number): number {
  return Math.min(length, Math.floor((c * Math.ceil(length / tile)) / chunks) * tile);
}

/** A Gram pass split in `chunks` runs of whole tiles: chunk c's pair sums, columns [start(c), start(c + 1)).
 *  Finishing another thread's chunk goes tile by tile, to stop as soon as that thread publishes. */
export function gramChunkWork(pairsOf: typeof gramPairs, start: typeof chunkStart, simd: SimdExports, views: WasmViews, areas: TileAreas, block: GradientBlock, tile: number, chunks: number): ChunkWork {
  return (c, result, taken) => {
    const begin = start(block.length, tile, chunks, c), end = start(block.length, tile, chunks, c + 1);
    if (taken === undefined) return pairsOf(simd, views, areas, block, true, tile, begin, end, result);
    for (let from = begin; from < end && !taken(); from += tile) pairsOf(simd, views, areas, block, true, tile, from, Math.min(end, from + tile), result);
  };
}

/** Σx² (kernel 0: sumsq) or the float32-lane Σx (kernel 1: readsum, the bandwidth probe) of
 *  `strides` × 16 floats at byte address `values`, chunk c being strides [⌊c·strides/chunks⌋, ⌊(c+1)·strides/chunks⌋). */
export function squareChunkWork(simd: SimdExports, values: number, strides: number, chunks: number, kernel: number): ChunkWork {
  const sum = kernel === 1 ? simd.readsum : simd.sumsq;
  return (c, result) => {
    const from = Math.floor((c * strides) / chunks) * 16, to = Math.floor(((c + 1) * strides) / chunks) * 16;
    result[0] = sum(values + from * 4, to - from);
  };
}
