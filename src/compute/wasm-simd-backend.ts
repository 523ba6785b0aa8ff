// Fast CPU path in WebAssembly SIMD (wasm-simd-module.ts): exact float64 products and sums, over
// column tiles (tiles.ts). A block allocated here already lies in wasm memory; any other block is
// copied tile by tile into a cache-sized scratch area, so its data still crosses DRAM only once.
import { addPairSums, checkGramShapes, type GradientBlock, type OwnedBlock, type ReductionBackend } from './reduction-backend.js';
import { forEachTile, tileLength } from './tiles.js';
import { WasmArena } from './wasm-arena.js';
import { instantiateSimd, SIMD_STRIDE, type SimdExports } from './wasm-simd-module.js';
import { dotUnrolled, sumOfSquaresUnrolled } from './js-unrolled-backend.js';

const SCRATCH_FLOATS = 32768; // 128 KiB: one tile of K rows (tileLength keeps K × tile within it)

export function createWasmSimdBackend(): ReductionBackend {
  const arena = new WasmArena();
  const simd = instantiateSimd(arena.memory);
  if ('unsupported' in simd) throw new Error(simd.unsupported);
  const scratch = arena.allocate(SCRATCH_FLOATS * 4);
  const inArena = (values: Float32Array): boolean => values.buffer === arena.memory.buffer;

  return {
    name: 'wasm-simd',
    mode: 'WebAssembly SIMD (f32 loads widened to f64x2), column tiles',
    allocateBlock(gradients: number, length: number): OwnedBlock {
      const bytes = gradients * length * 4;
      const offset = arena.allocate(bytes);
      let released = false;
      return {
        gradients,
        length,
        get values() {
          return arena.floats(offset, gradients * length);
        },
        release() {
          if (!released) arena.release(offset, bytes);
          released = true;
        },
      };
    },
    async addGram(block: GradientBlock, gram: Float64Array): Promise<void> {
      checkGramShapes(block, gram);
      const pairs = new Float64Array((block.gradients * (block.gradients + 1)) / 2);
      gramPairs(simd, arena, scratch, inArena(block.values), block, pairs);
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

function sumsqInPlace(simd: SimdExports, address: number, values: Float32Array): number {
  const body = values.length - (values.length % SIMD_STRIDE);
  return simd.sumsq(address, body) + sumOfSquaresUnrolled(values.subarray(body));
}

function gramPairs(simd: SimdExports, arena: WasmArena, scratch: number, inPlace: boolean, block: GradientBlock, pairs: Float64Array): void {
  const { gradients: k, length: n } = block;
  const values = block.values;
  const tile = tileLength(k);
  forEachTile(n, tile, (start, width) => {
    // Row i of this tile: at rowAddress(i) in wasm memory, element (i, start) of `rows`.
    let rows = values, rowAt = (i: number) => i * n + start, rowAddress = (i: number) => values.byteOffset + (i * n + start) * 4;
    if (!inPlace) {
      rows = arena.floats(scratch, k * width);
      for (let i = 0; i < k; i++) rows.set(values.subarray(i * n + start, i * n + start + width), i * width);
      rowAt = (i: number) => i * width;
      rowAddress = (i: number) => scratch + i * width * 4;
    }
    const body = width - (width % SIMD_STRIDE);
    let q = 0;
    for (let i = 0; i < k; i++) {
      for (let j = i; j < k; j++, q++) {
        const simdPart = i === j ? simd.sumsq(rowAddress(i), body) : simd.dot(rowAddress(i), rowAddress(j), body);
        const tail = dotUnrolled(rows, rowAt(i) + body, rows, rowAt(j) + body, width - body);
        pairs[q] = (pairs[q] as number) + simdPart + tail;
      }
    }
  });
}
