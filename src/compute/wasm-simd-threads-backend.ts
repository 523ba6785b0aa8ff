// wasm-simd on several cores: the same module and tile/kernel code (gramPairs) over one shared
// WebAssembly.Memory, a block's columns split into contiguous tile-aligned parts, one per thread
// (the calling thread computes part 0 while workers compute the rest, each into its own pair sums),
// the parts added in a fixed order so the result does not depend on which thread finished first.
// From K ≈ 8 one core's arithmetic, not memory, bounds the Gram (bench compute's ceiling line).
// Blocks under SPLIT_BYTES stay on the calling thread: there a dispatch would cost more than it saves.
import { availableParallelism } from 'node:os';
import { addPairSums, checkGramShapes, type GradientBlock, type OwnedBlock, type ReductionBackend } from './reduction-backend.js';
import { tileLength } from './tiles.js';
import { wasm } from './wasm-api.js';
import { WasmArena } from './wasm-arena.js';
import { compileSimd, SIMD_STRIDE, type SimdExports } from './wasm-simd-module.js';
import { gramPairs, sumsqInPlace, TileScratch } from './wasm-simd-backend.js';
import { Command, CONTROL_BYTES, WasmThreadPool } from './wasm-threads-pool.js';
import { sumOfSquaresUnrolled } from './js-unrolled-backend.js';

/** Blocks (Gram) and arrays (Σx²) smaller than this are computed on the calling thread alone. */
export const SPLIT_BYTES = 256 << 10;
const DEFAULT_TIMEOUT_MS = 120_000;

export interface WasmSimdThreadsOptions {
  /** Threads in all, the calling one included (default: available cores, at most 4); 1: no workers. */
  readonly threads?: number;
  /** As wasm-simd's: fused multiply-add where the runtime has relaxed SIMD. */
  readonly fused?: boolean;
  /** A worker call that takes longer is abandoned (rejected, the worker replaced). */
  readonly timeoutMs?: number;
}

export interface WasmSimdThreadsBackend extends ReductionBackend {
  readonly threads: number;
  readonly pool: WasmThreadPool | undefined;
}

export function defaultThreads(): number {
  return Math.max(1, Math.min(4, availableParallelism()));
}

export async function createWasmSimdThreadsBackend(options: WasmSimdThreadsOptions = {}): Promise<WasmSimdThreadsBackend> {
  const threads = options.threads ?? defaultThreads();
  if (!Number.isInteger(threads) || threads < 1 || threads > 64) throw new RangeError(`wasm-simd-threads: threads must be an integer in 1..64, got ${threads}`);
  const arena = new WasmArena({ shared: true });
  const compiled = compileSimd({ shared: true, ...(options.fused === undefined ? {} : { fused: options.fused }) });
  if ('unsupported' in compiled) throw new Error(compiled.unsupported);
  const simd = { ...(new wasm.Instance(compiled.module, { e: { m: arena.memory } }).exports as unknown as Omit<SimdExports, 'fused'>), fused: compiled.fused };
  const scratches = Array.from({ length: threads }, () => new TileScratch(arena));
  const pairAreas = scratches.map(() => ({ offset: 0, bytes: 0 }));
  const controls = Array.from({ length: threads - 1 }, () => arena.allocate(CONTROL_BYTES));
  const pool = threads > 1 ? await WasmThreadPool.start(compiled.module, arena.memory, controls, options.timeoutMs ?? DEFAULT_TIMEOUT_MS) : undefined;
  const squaresScratch = arena.allocate(SPLIT_BYTES);
  const inArena = (values: Float32Array): boolean => values.buffer === arena.memory.buffer;
  // Calls that use the workers run one at a time (their scratch and pair areas are per worker).
  let queue: Promise<unknown> = Promise.resolve();
  const serially = <T>(job: () => Promise<T>): Promise<T> => {
    const result = queue.then(job);
    queue = result.catch(() => {});
    return result;
  };

  /** Worker w's pair-sum area, grown to hold `count` float64. */
  const pairArea = (w: number, count: number): number => {
    const area = pairAreas[w] as { offset: number; bytes: number };
    if (count * 8 > area.bytes) {
      if (area.bytes > 0) arena.release(area.offset, area.bytes);
      [area.offset, area.bytes] = [arena.allocate(count * 8), count * 8];
    }
    return area.offset;
  };

  const gramOnWorkers = async (block: GradientBlock, pairs: Float64Array): Promise<void> => {
    const { gradients: k, length: n } = block;
    const tile = tileLength(k), tiles = Math.ceil(n / tile);
    const parts = Math.min(threads, tiles);
    for (const scratch of scratches.slice(0, parts)) scratch.fit(k, tile);
    const areas = Array.from({ length: parts }, (_, p) => pairArea(p, pairs.length)); // all growing done: views stay current
    const values = block.values;
    const bound = (p: number): number => Math.min(n, Math.floor((p * tiles) / parts) * tile);
    const work = [];
    for (let p = 1; p < parts; p++) {
      const s = scratches[p] as TileScratch;
      work.push((pool as WasmThreadPool).run(p - 1, Command.gram, [k, n, values.byteOffset, bound(p), bound(p + 1), tile, s.narrow, s.wide, s.out, areas[p] as number]));
    }
    gramPairs(simd, arena, scratches[0] as TileScratch, block, true, tile, 0, bound(1), pairs);
    await Promise.all(work);
    for (let p = 1; p < parts; p++) {
      const part = arena.doubles(areas[p] as number, pairs.length);
      for (let q = 0; q < pairs.length; q++) pairs[q] = (pairs[q] as number) + (part[q] as number);
    }
  };

  const squaresOnWorkers = async (values: Float32Array): Promise<number> => {
    // Parts of whole SIMD strides; the tail (length mod 16) is the calling thread's, added last.
    const body = values.length - (values.length % SIMD_STRIDE);
    const bound = (p: number): number => Math.floor((p * (body / SIMD_STRIDE)) / threads) * SIMD_STRIDE;
    const work = [];
    for (let p = 1; p < threads; p++) work.push((pool as WasmThreadPool).run(p - 1, Command.sumsq, [values.byteOffset + bound(p) * 4, bound(p + 1) - bound(p)]));
    let sum = simd.sumsq(values.byteOffset, bound(1));
    await Promise.all(work);
    for (let p = 1; p < threads; p++) sum += (pool as WasmThreadPool).result(p - 1);
    return sum + sumOfSquaresUnrolled(values.subarray(body));
  };

  return {
    name: 'wasm-simd-threads',
    mode: `${threads} thread${threads === 1 ? ' (no workers)' : `s (caller + ${threads - 1} worker${threads > 2 ? 's' : ''}) over shared memory`}, WebAssembly SIMD, tiles widened to f64 once, 4×2 register blocks, ${simd.fused ? 'fused multiply-add (relaxed SIMD)' : 'multiply then add'}`,
    threads,
    pool,
    allocateBlock: (gradients: number, length: number): OwnedBlock => arena.block(gradients, length),
    async addGram(block: GradientBlock, gram: Float64Array): Promise<void> {
      checkGramShapes(block, gram);
      const { gradients: k, length: n } = block;
      const pairs = new Float64Array((k * (k + 1)) / 2);
      const split = pool !== undefined && k * n * 4 >= SPLIT_BYTES && n > tileLength(k) && inArena(block.values);
      if (split) {
        await serially(() => gramOnWorkers(block, pairs));
      } else {
        const tile = tileLength(k), scratch = scratches[0] as TileScratch;
        scratch.fit(k, tile); // may grow memory: read block.values after it
        gramPairs(simd, arena, scratch, block, inArena(block.values), tile, 0, n, pairs);
      }
      addPairSums(pairs, k, gram);
    },
    async sumOfSquares(values: Float32Array): Promise<number> {
      if (inArena(values) && pool !== undefined && values.length * 4 >= SPLIT_BYTES) return serially(() => squaresOnWorkers(values));
      if (inArena(values)) return sumsqInPlace(simd, values.byteOffset, values);
      let sum = 0;
      const chunk = SPLIT_BYTES / 4;
      for (let start = 0; start < values.length; start += chunk) {
        const part = values.subarray(start, Math.min(values.length, start + chunk));
        arena.floats(squaresScratch, part.length).set(part);
        sum += sumsqInPlace(simd, squaresScratch, arena.floats(squaresScratch, part.length));
      }
      return sum;
    },
    dispose: () => pool?.dispose(),
  };
}
