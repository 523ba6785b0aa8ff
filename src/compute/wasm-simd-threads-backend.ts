// wasm-simd on several cores: the same module and tile/kernel code (gramPairs) over one shared
// WebAssembly.Memory. A block's columns are cut into at most CHUNKS runs of whole tiles; the calling
// thread and the idle workers each claim chunks until none is left, and the calling thread then
// computes itself any chunk a worker has not finished (wasm-threads-chunks.ts): a worker pushed off
// its core by another process never holds a call up. Each thread's result for a chunk has a slot of
// its own in a per-call area, the first one finished is published, and the chunks are added in order:
// the result is the same bit for bit whoever computed what, and for any thread count. A call area is
// reused only once every worker given it is done, so a late worker never writes into a later call's.
// Where other processes keep every core busy the workers are left out (WorkerUse), measured per call.
// From K ≈ 8 one core's arithmetic, not memory, bounds the Gram (bench compute's ceiling line).
// Calls under SPLIT_PRODUCTS stay on the calling thread: there waking the workers costs more than it saves.
import { availableParallelism } from 'node:os';
import { addPairSums, checkGramShapes, type GradientBlock, type OwnedBlock, type ReductionBackend } from './reduction-backend.js';
import { tileLength } from './tiles.js';
import { wasm } from './wasm-api.js';
import { WasmArena } from './wasm-arena.js';
import { compileSimd, SIMD_STRIDE, type SimdExports } from './wasm-simd-module.js';
import { gramPairs, sumsqInPlace, TileScratch } from './wasm-simd-backend.js';
import { chunkAreaBytes, chunkStart, claimChunks, gramChunkWork, resultsOffset, squareChunkWork, type ChunkArea, type ChunkWork } from './wasm-threads-chunks.js';
import { Command, CONTROL_BYTES, type Job, WasmThreadPool } from './wasm-threads-pool.js';
import { sumOfSquaresUnrolled } from './js-unrolled-backend.js';

/** Calls with fewer products than this (K(K+1)/2 × length for a Gram, the length for Σx²) run on the
 *  calling thread alone: measured on 2 shared cores, splitting broke even at ≈ 100–150 µs of work
 *  (a worker's wake-up and round trip cost 20–80 µs), e.g. K = 8 × 32 Ki floats or Σx² of 512 Ki. */
export const SPLIT_PRODUCTS = 1 << 19;
const SCRATCH_BYTES = 256 << 10; // Σx² of an array outside the shared memory is copied in through this
/** Most chunks a call is cut into, whatever the thread count: the result depends only on the block.
 *  Each chunk's last tile goes without gramPairs' read-ahead: at 4 tiles a chunk (64 chunks of a 32 MiB
 *  K=2 block) that cost 13% on one thread, at 16 tiles (16 chunks) ≈ 2% (interleaved runs, 2 shared cores). */
const CHUNKS = 16;
/** Fewest tiles a chunk has (for the same reason): at the probe's 2 MiB K=8 block (16 tiles), 4 chunks
 *  of 4 tiles ran 1.1–1.5× faster than 16 of one (median of 200 interleaved calls, workers always on). */
const MIN_CHUNK_TILES = 4;
/** One split call in this many uses the workers if they have been slower lately, or leaves them out if faster. */
const EXPLORE = 8;
const SAMPLES = 5; // speeds kept per kind of call and way (with or without workers)
const SAMPLES_FIRST = 3; // each way is taken this often first
const SQUARES_CHUNK_BYTES = 256 << 10;
const DEFAULT_TIMEOUT_MS = 120_000;

export interface WasmSimdThreadsOptions {
  /** Threads in all, the calling one included (default: available cores, at most 4); 1: no workers. */
  readonly threads?: number;
  /** As wasm-simd's: fused multiply-add where the runtime has relaxed SIMD. */
  readonly fused?: boolean;
  /** A worker still on one command after this long is stopped and replaced (calls never wait for it). */
  readonly timeoutMs?: number;
  /** Wake the workers only where recent calls of the kind ran faster with them (default true; false: always). */
  readonly adaptive?: boolean;
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
  const squaresScratch = arena.allocate(SCRATCH_BYTES);
  const areas = new CallAreas(arena);
  const workerUse = new WorkerUse();
  const inArena = (values: Float32Array): boolean => values.buffer === arena.memory.buffer;
  let disposed = false;
  const checkOpen = (): void => {
    if (disposed) throw new Error('wasm-simd-threads: the backend was disposed');
  };

  /** Posts the kind's command to every idle worker and computes on this thread meanwhile, finishing
   *  every chunk they have not: returns as soon as each chunk has a result, never waiting for a worker.
   *  Leaves the workers out where WorkerUse finds calls of the kind faster without them; `size`: the
   *  call's work, in a unit of its kind. `prepare` readies a thread's scratch (it may allocate: `args`
   *  and `work` are called after every allocation). The result: the chunks' `count` float64 sums added in chunk order. */
  const onAllThreads = (kind: string, size: number, chunks: number, count: number, prepare: (thread: number) => void, args: (thread: number) => readonly number[], work: () => ChunkWork): Float64Array => {
    const started = performance.now();
    const command = kind.startsWith('gram') ? Command.gram : Command.sumsq;
    const wanted = options.adaptive === false || kind === 'read' || workerUse.use(kind);
    const helpers = wanted ? Array.from({ length: threads - 1 }, (_, w) => w).filter((w) => (pool as WasmThreadPool).idle(w)) : [];
    for (const thread of [0, ...helpers.map((w) => w + 1)]) prepare(thread);
    const area = areas.take(chunkAreaBytes(chunks, threads, count));
    const words = new Int32Array(arena.memory.buffer, area.offset, 1 + chunks).fill(0); // published to the workers by post's Atomics.store
    const shared: ChunkArea = { words, chunks, threads, count, results: area.offset + resultsOffset(chunks) };
    for (const w of helpers) {
      const job = (pool as WasmThreadPool).post(w, command, [area.offset, chunks, w + 1, threads, ...args(w + 1)]);
      job?.settled.catch(() => {}); // recorded in pool.failures; this call does not need the worker
      if (job) area.jobs.push(job);
    }
    claimChunks(shared, 0, arena, work(), () => {}, true);
    workerUse.record(kind, area.jobs.length > 0, size / Math.max(performance.now() - started, 1e-3));
    const sums = new Float64Array(count);
    for (let c = 0; c < chunks; c++) {
      const result = arena.doubles(shared.results + (c * threads + Atomics.load(words, 1 + c) - 1) * count * 8, count);
      for (let q = 0; q < count; q++) sums[q] = (sums[q] as number) + (result[q] as number);
    }
    return sums;
  };

  const gramOnAllThreads = (block: GradientBlock): Float64Array => {
    const { gradients: k, length: n } = block;
    const tile = tileLength(k), chunks = Math.min(CHUNKS, Math.ceil(n / tile / MIN_CHUNK_TILES));
    const scratchOf = (thread: number): TileScratch => scratches[thread] as TileScratch;
    return onAllThreads(`gram K=${k}`, n, chunks, (k * (k + 1)) / 2, (thread) => scratchOf(thread).fit(k, tile), (thread) => {
      const own = scratchOf(thread);
      return [k, n, block.values.byteOffset, tile, own.narrow, own.wide, own.out];
    }, () => gramChunkWork(gramPairs, chunkStart, simd, arena, scratchOf(0), { gradients: k, length: n, values: block.values }, tile, chunks));
  };

  /** Σx² (kernel 0) or the float32-lane Σx (kernel 1) of the whole SIMD strides of `values` in chunks, plus the tail's Σx² (length mod 16). */
  const squaresOnAllThreads = (values: Float32Array, kernel = 0): number => {
    const strides = Math.floor(values.length / SIMD_STRIDE), chunks = Math.min(CHUNKS, Math.ceil((strides * SIMD_STRIDE * 4) / SQUARES_CHUNK_BYTES));
    const at = values.byteOffset;
    const [sum] = onAllThreads(kernel === 1 ? 'read' : 'squares', strides, chunks, 1, () => {}, () => [at, strides, kernel], () => squareChunkWork(simd, at, strides, chunks, kernel));
    return (sum as number) + sumOfSquaresUnrolled(values.subarray(strides * SIMD_STRIDE));
  };

  return {
    name: 'wasm-simd-threads',
    mode: `${threads} thread${threads === 1 ? ' (no workers)' : `s (caller + ${threads - 1} worker${threads > 2 ? 's' : ''}) over shared memory`}, WebAssembly SIMD, tiles widened to f64 once, 4×2 register blocks, ${simd.fused ? 'fused multiply-add (relaxed SIMD)' : 'multiply then add'}`,
    threads,
    pool,
    allocateBlock: (gradients: number, length: number): OwnedBlock => arena.block(gradients, length),
    async addGram(block: GradientBlock, gram: Float64Array): Promise<void> {
      checkOpen();
      checkGramShapes(block, gram);
      const { gradients: k, length: n } = block;
      const pairs = new Float64Array((k * (k + 1)) / 2);
      const split = pool !== undefined && ((k * (k + 1)) / 2) * n >= SPLIT_PRODUCTS && n > tileLength(k) && inArena(block.values);
      if (split) {
        pairs.set(gramOnAllThreads(block));
      } else {
        const tile = tileLength(k), scratch = scratches[0] as TileScratch;
        scratch.fit(k, tile); // may grow memory: read block.values after it
        gramPairs(simd, arena, scratch, block, inArena(block.values), tile, 0, n, pairs);
      }
      addPairSums(pairs, k, gram);
    },
    async sumOfSquares(values: Float32Array): Promise<number> {
      checkOpen();
      if (inArena(values) && pool !== undefined && values.length >= SPLIT_PRODUCTS) return squaresOnAllThreads(values);
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
      checkOpen();
      if (!inArena(values) || values.length % SIMD_STRIDE !== 0) throw new RangeError('streamingRead needs an allocateBlock view whose length is a multiple of 16');
      return pool === undefined ? simd.readsum(values.byteOffset, values.length) : squaresOnAllThreads(values, 1);
    },
    dispose: () => {
      disposed = true;
      pool?.dispose();
    },
  };
}

/** Whether a split call wakes the workers. Where other processes keep every core busy, a woken worker
 *  takes the caller's core about as often as a free one, and the call ran 4–8% slower than on the caller
 *  alone (interleaved runs, 2 shared cores, load ≈ 2); with a core free it runs up to 1.8× faster. So
 *  each kind of call keeps its last SAMPLES speeds with and without workers and takes the way with the
 *  higher median (a preempted call is many times slower: a mean would follow those); one call in
 *  EXPLORE tries the other way, so the choice follows the load. */
export class WorkerUse {
  private readonly kinds = new Map<string, { withWorkers: number[]; alone: number[]; calls: number }>();

  use(kind: string): boolean {
    const seen = this.kinds.get(kind);
    if (seen === undefined || seen.withWorkers.length < SAMPLES_FIRST) return true;
    if (seen.alone.length < SAMPLES_FIRST) return false;
    const faster = median(seen.withWorkers) >= median(seen.alone);
    return seen.calls % EXPLORE === 0 ? !faster : faster;
  }

  /** `speed`: work per millisecond of the call (any unit, the same for the kind). */
  record(kind: string, withWorkers: boolean, speed: number): void {
    const seen = this.kinds.get(kind) ?? { withWorkers: [], alone: [], calls: 0 };
    this.kinds.set(kind, seen);
    seen.calls++;
    const speeds = withWorkers ? seen.withWorkers : seen.alone;
    speeds.push(speed);
    if (speeds.length > SAMPLES) speeds.shift();
  }
}

function median(values: readonly number[]): number {
  return [...values].sort((a, b) => a - b)[values.length >> 1] as number;
}

/** Per-call areas (claims, chunk states, results) kept for reuse: one is taken again only once every
 *  worker given it is done or stopped. At most one per thread is ever held: a busy worker gets no command. */
class CallAreas {
  private readonly areas: { offset: number; bytes: number; jobs: Job[] }[] = [];
  constructor(private readonly arena: WasmArena) {}

  take(bytes: number): { readonly offset: number; readonly jobs: Job[] } {
    const free = (area: { jobs: Job[] }): boolean => area.jobs.every((job) => job.finished());
    let area = this.areas.find((a) => a.bytes >= bytes && free(a));
    if (area === undefined) {
      const small = this.areas.findIndex(free);
      if (small >= 0) {
        const old = this.areas.splice(small, 1)[0] as { offset: number; bytes: number };
        this.arena.release(old.offset, old.bytes);
      }
      area = { offset: this.arena.allocate(bytes), bytes, jobs: [] };
      this.areas.push(area);
    }
    area.jobs = [];
    return area;
  }
}
