// wasm-simd on several cores: the same module and tile/kernel code (gramPairs) over one shared
// WebAssembly.Memory. A block's columns are cut into at most CHUNKS runs of whole tiles; the calling
// thread and the workers each claim chunks until none is left (wasm-threads-chunks.ts), each chunk's
// pair sums land in a slot of their own, and the slots are added in chunk order: the result is the
// same bit for bit whoever computed what, and a thread slowed by other processes just takes fewer.
// From K ≈ 8 one core's arithmetic, not memory, bounds the Gram (bench compute's ceiling line).
// Calls under SPLIT_PRODUCTS stay on the calling thread: there waking the workers costs more than it saves.
import { availableParallelism } from 'node:os';
import { addPairSums, checkGramShapes, type GradientBlock, type OwnedBlock, type ReductionBackend } from './reduction-backend.js';
import { tileLength } from './tiles.js';
import { wasm } from './wasm-api.js';
import { WasmArena } from './wasm-arena.js';
import { compileSimd, SIMD_STRIDE, type SimdExports } from './wasm-simd-module.js';
import { gramPairs, sumsqInPlace, TileScratch } from './wasm-simd-backend.js';
import { chunkStart, claimGramChunks, claimSquareChunks } from './wasm-threads-chunks.js';
import { Command, CONTROL_BYTES, WasmThreadPool } from './wasm-threads-pool.js';
import { sumOfSquaresUnrolled } from './js-unrolled-backend.js';

/** Calls with fewer products than this (K(K+1)/2 × length for a Gram, the length for Σx²) run on the
 *  calling thread alone: measured on 2 shared cores, splitting broke even at ≈ 100–150 µs of work
 *  (a worker's wake-up and round trip cost 20–80 µs), e.g. K = 8 × 32 Ki floats or Σx² of 512 Ki. */
export const SPLIT_PRODUCTS = 1 << 19;
const SCRATCH_BYTES = 256 << 10; // Σx² of an array outside the shared memory is copied in through this
/** Most chunks a call is cut into, whatever the thread count: the result depends only on the block. */
const CHUNKS = 64;
const SQUARES_CHUNK_BYTES = 256 << 10;
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
  /** Σ values in float32 lanes (wasm-simd-module's readsum) on every thread: bench compute's
   *  memory bandwidth with this many threads. `values`: from allocateBlock, length a multiple of 16. */
  streamingRead(values: Float32Array): Promise<number>;
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
  const controls = Array.from({ length: threads - 1 }, () => arena.allocate(CONTROL_BYTES));
  const pool = threads > 1 ? await WasmThreadPool.start(compiled.module, arena.memory, controls, options.timeoutMs ?? DEFAULT_TIMEOUT_MS) : undefined;
  const counter = arena.allocate(64), squareSlots = arena.allocate(CHUNKS * 8), squaresScratch = arena.allocate(SCRATCH_BYTES);
  const gramSlots = { offset: 0, bytes: 0 };
  const inArena = (values: Float32Array): boolean => values.buffer === arena.memory.buffer;
  // Calls that use the workers run one at a time (they share the counter, the slots and the workers' scratch).
  let queue: Promise<unknown> = Promise.resolve();
  const serially = <T>(job: () => Promise<T>): Promise<T> => {
    const result = queue.then(job);
    queue = result.catch(() => {});
    return result;
  };

  /** Posts a command to every worker, runs `own` here meanwhile, and waits for every worker, also
   *  when one fails: none may still be at work (on this call's counter and slots) when the next starts. */
  const onAllThreads = async (command: number, argsFor: (thread: number) => readonly number[], own: (counter: Int32Array) => void): Promise<void> => {
    const claims = new Int32Array(arena.memory.buffer, counter, 1);
    Atomics.store(claims, 0, 0);
    const work = Array.from({ length: threads - 1 }, (_, w) => (pool as WasmThreadPool).run(w, command, argsFor(w + 1)));
    const firstFailure = Promise.allSettled(work).then((results) => results.find((r) => r.status === 'rejected'));
    try {
      own(claims);
    } finally {
      await firstFailure; // also when `own` threw: no worker may still be at work
    }
    const failed = await firstFailure;
    if (failed) throw failed.reason;
  };

  const gramOnAllThreads = async (block: GradientBlock, pairs: Float64Array): Promise<void> => {
    const { gradients: k, length: n } = block;
    const tile = tileLength(k), chunks = Math.min(CHUNKS, Math.ceil(n / tile)), count = pairs.length;
    for (const scratch of scratches) scratch.fit(k, tile);
    if (chunks * count * 8 > gramSlots.bytes) {
      if (gramSlots.bytes > 0) arena.release(gramSlots.offset, gramSlots.bytes);
      [gramSlots.offset, gramSlots.bytes] = [arena.allocate(chunks * count * 8), chunks * count * 8];
    }
    const values = block.values; // all growing is done: this view stays current
    const work = { block, tile, chunks, slots: gramSlots.offset };
    const argsFor = (thread: number): number[] => {
      const own = scratches[thread] as TileScratch;
      return [k, n, values.byteOffset, tile, chunks, work.slots, counter, own.narrow, own.wide, own.out];
    };
    await onAllThreads(Command.gram, argsFor, (claims) =>
      claimGramChunks(gramPairs, chunkStart, simd, arena, scratches[0] as TileScratch, claims, work));
    const slots = arena.doubles(work.slots, chunks * count);
    for (let c = 0; c < chunks; c++) for (let q = 0; q < count; q++) pairs[q] = (pairs[q] as number) + (slots[c * count + q] as number);
  };

  /** The chunk sums of the whole SIMD strides of `values` (kernel: see claimSquareChunks), in order, and the tail left (length mod 16). */
  const squaresOnAllThreads = async (values: Float32Array, kernel = 0): Promise<number> => {
    const strides = Math.floor(values.length / SIMD_STRIDE), chunks = Math.min(CHUNKS, Math.ceil((strides * SIMD_STRIDE * 4) / SQUARES_CHUNK_BYTES));
    const args = [values.byteOffset, strides, chunks, squareSlots, counter, kernel];
    await onAllThreads(Command.sumsq, () => args, (claims) => claimSquareChunks(simd, arena, claims, values.byteOffset, strides, chunks, squareSlots, kernel));
    const slots = arena.doubles(squareSlots, chunks);
    let sum = 0;
    for (let c = 0; c < chunks; c++) sum += slots[c] as number;
    return sum + sumOfSquaresUnrolled(values.subarray(strides * SIMD_STRIDE)); // the tail, length mod 16
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
      const split = pool !== undefined && ((k * (k + 1)) / 2) * n >= SPLIT_PRODUCTS && n > tileLength(k) && inArena(block.values);
      if (split) {
        await serially(() => gramOnAllThreads(block, pairs));
      } else {
        const tile = tileLength(k), scratch = scratches[0] as TileScratch;
        scratch.fit(k, tile); // may grow memory: read block.values after it
        gramPairs(simd, arena, scratch, block, inArena(block.values), tile, 0, n, pairs);
      }
      addPairSums(pairs, k, gram);
    },
    async sumOfSquares(values: Float32Array): Promise<number> {
      if (inArena(values) && pool !== undefined && values.length >= SPLIT_PRODUCTS) return serially(() => squaresOnAllThreads(values));
      if (inArena(values)) return sumsqInPlace(simd, values.byteOffset, values);
      let sum = 0;
      const chunk = SCRATCH_BYTES / 4;
      for (let start = 0; start < values.length; start += chunk) {
        const part = values.subarray(start, Math.min(values.length, start + chunk));
        arena.floats(squaresScratch, part.length).set(part);
        sum += sumsqInPlace(simd, squaresScratch, arena.floats(squaresScratch, part.length));
      }
      return sum;
    },
    async streamingRead(values: Float32Array): Promise<number> {
      if (!inArena(values) || values.length % SIMD_STRIDE !== 0) throw new RangeError('streamingRead needs an allocateBlock view whose length is a multiple of 16');
      return pool === undefined ? simd.readsum(values.byteOffset, values.length) : serially(() => squaresOnAllThreads(values, 1));
    },
    dispose: () => pool?.dispose(),
  };
}
