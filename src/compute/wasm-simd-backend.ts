// Fast CPU path in WebAssembly SIMD (wasm-simd-module.ts): exact float64 products and sums, over
// column tiles (tiles.ts) widened to float64 once and reduced by register-blocked kernels
// (wasm-gram-kernels.ts). A block allocated here already lies in wasm memory; any other block is
// copied tile by tile into a cache-sized scratch area, so its data still crosses DRAM only once.
import { addPairSums, checkGramShapes, type GradientBlock, type OwnedBlock, type ReductionBackend } from './reduction-backend.js';
import { forEachTile, tileLength } from './tiles.js';
import { WasmArena } from './wasm-arena.js';
import { instantiateSimd, SIMD_STRIDE, type SimdExports } from './wasm-simd-module.js';
import { sumOfSquaresUnrolled } from './js-unrolled-backend.js';

const SCRATCH_FLOATS = 32768; // 128 KiB: Σx² copies other blocks in through this many floats at a time
const MOST_GRADIENTS_PREPARED = 32; // tile scratch made at start; larger K grows it on first use

export interface WasmSimdOptions {
  /** Use relaxed SIMD's fused multiply-add where the runtime has it (default; bit-identical results). */
  readonly fused?: boolean;
}

export function createWasmSimdBackend(options: WasmSimdOptions = {}): ReductionBackend {
  const arena = new WasmArena();
  const simd = instantiateSimd(arena.memory, options);
  if ('unsupported' in simd) throw new Error(simd.unsupported);
  const scratch = arena.allocate(SCRATCH_FLOATS * 4);
  const tiles = new TileScratch(arena);
  const inArena = (values: Float32Array): boolean => values.buffer === arena.memory.buffer;

  return {
    name: 'wasm-simd',
    mode: `WebAssembly SIMD, tiles widened to f64 once, 4×2 register blocks, ${simd.fused ? 'fused multiply-add (relaxed SIMD)' : 'multiply then add'}`,
    allocateBlock: (gradients: number, length: number): OwnedBlock => arena.block(gradients, length),
    async addGram(block: GradientBlock, gram: Float64Array): Promise<void> {
      checkGramShapes(block, gram);
      const pairs = new Float64Array((block.gradients * (block.gradients + 1)) / 2);
      const tile = tileLength(block.gradients);
      tiles.fit(block.gradients, tile); // may grow memory: read block.values after it
      gramPairs(simd, arena, tiles, block, inArena(block.values), tile, 0, block.length, pairs);
      addPairSums(pairs, block.gradients, gram);
    },
    async sumOfSquares(values: Float32Array): Promise<number> {
      if (inArena(values)) return sumsqInPlace(simd, values.byteOffset, values);
      let sum = 0;
      forEachTile(values.length, SCRATCH_FLOATS, (start, n) => {
        const part = values.subarray(start, start + n);
        arena.floats(scratch, n).set(part);
        sum += sumsqInPlace(simd, scratch, arena.floats(scratch, n));
      });
      return sum;
    },
    dispose: () => {},
  };
}

export function sumsqInPlace(simd: SimdExports, address: number, values: Float32Array): number {
  const body = values.length - (values.length % SIMD_STRIDE);
  return simd.sumsq(address, body) + sumOfSquaresUnrolled(values.subarray(body));
}

/** Scratch in wasm memory for one tile: float32 rows copied in, the float64 rows, a block's sums. */
export class TileScratch implements TileAreas {
  private narrowBytes = 0;
  private wideBytes = 0;
  narrow = 0;
  wide = 0;
  readonly out: number;
  constructor(private readonly arena: WasmArena) {
    this.out = arena.allocate(64);
    this.fit(MOST_GRADIENTS_PREPARED, tileLength(MOST_GRADIENTS_PREPARED));
  }
  /** Grows the scratch for K gradients × tile columns; may grow wasm memory (views detach). */
  fit(gradients: number, tile: number): void {
    const narrow = gradients * tile * 4, wide = (gradients + 1) * tile * 8;
    if (narrow > this.narrowBytes) [this.narrow, this.narrowBytes] = [this.grow(this.narrow, this.narrowBytes, narrow), narrow];
    if (wide > this.wideBytes) [this.wide, this.wideBytes] = [this.grow(this.wide, this.wideBytes, wide), wide];
  }
  private grow(offset: number, bytes: number, need: number): number {
    if (bytes > 0) this.arena.release(offset, bytes);
    return this.arena.allocate(need);
  }
}

/** Typed views of wasm memory: an arena on the calling thread, the shared memory in a worker. */
export interface WasmViews {
  floats(offset: number, count: number): Float32Array;
  doubles(offset: number, count: number): Float64Array;
}

/** One thread's tile scratch addresses (TileScratch, fitted for the block's K and tile). */
export interface TileAreas {
  readonly narrow: number;
  readonly wide: number;
  readonly out: number;
}

/** Pair sums (upper triangle, addPairSums order) of columns [begin, end) of a block, added into
 *  `pairs`, tile by tile: each tile's rows are widened to float64 once, zero-padded to a multiple of
 *  4 columns and to an even row count, then the pairs (i ≤ j) are covered by 4×2 and 2×2 register
 *  blocks and 2-row diagonal blocks. `inPlace`: the block lies in the memory the kernels run over.
 *  Self-contained (it names only its parameters and globals): wasm-simd-threads runs its source in
 *  workers, which cannot import TypeScript modules. */
export function gramPairs(simd: SimdExports, views: WasmViews, areas: TileAreas, block: GradientBlock, inPlace: boolean, tile: number, begin: number, end: number, pairs: Float64Array): void {
  const { gradients: k, length: n } = block;
  const even = k + (k % 2);
  const values = block.values;
  const wide = views.doubles(areas.wide, even * tile), out = views.doubles(areas.out, 8);
  const narrow = inPlace ? undefined : views.floats(areas.narrow, k * tile);
  const pairAt = (row: number, col: number): number => row * k - (row * (row - 1)) / 2 + col - row;
  for (let start = begin; start < end; start += tile) {
    const width = Math.min(tile, end - start);
    const padded = Math.ceil(width / 4) * 4, stride = padded * 8, simdPart = width - (width % 4);
    for (let i = 0; i < k; i++) {
      const from = i * n + start;
      let source = values.byteOffset + from * 4;
      if (narrow) {
        narrow.set(values.subarray(from, from + simdPart), i * tile);
        source = areas.narrow + i * tile * 4;
      }
      simd.widen(source, areas.wide + i * stride, simdPart);
      for (let c = simdPart; c < width; c++) wide[i * padded + c] = values[from + c] as number;
      wide.fill(0, i * padded + width, (i + 1) * padded);
    }
    if (even > k) wide.fill(0, k * padded, even * padded);
    // The next tile's rows, two per kernel call, read ahead while this tile computes.
    const next = start + width, ahead = inPlace && next + padded <= end ? (i: number) => values.byteOffset + (i * n + next) * 4 : () => areas.narrow;
    let call = 0;
    const kernel = (rows: number, i: number, j: number): void => {
      const [first, second] = [2 * call < k ? ahead(2 * call) : areas.narrow, 2 * call + 1 < k ? ahead(2 * call + 1) : areas.narrow];
      call++;
      const run = rows === 4 ? simd.gram4x2 : rows === 2 ? simd.gram2x2 : simd.gramDiagonal2;
      run(areas.wide + i * stride, stride, areas.wide + j * stride, padded, areas.out, first, second);
    };
    const add = (row: number, col: number, sum: number): void => {
      if (col < k) pairs[pairAt(row, col)] = (pairs[pairAt(row, col)] as number) + sum;
    };
    for (let j = 0; j < even; j += 2) {
      // Rows above j in 4×2 and 2×2 blocks, then the three pairs among rows j and j + 1.
      for (let i = 0; i < j; i += 4) {
        const rows = Math.min(4, j - i);
        kernel(rows, i, j);
        for (let r = 0; r < rows; r++) for (let c = 0; c < 2; c++) add(i + r, j + c, out[r * 2 + c] as number);
      }
      kernel(0, j, j);
      add(j, j, out[0] as number);
      add(j, j + 1, out[1] as number);
      add(j + 1, j + 1, out[2] as number);
    }
  }
}
