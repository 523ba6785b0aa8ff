// The register-blocked Gram kernels of the wasm-simd backend. A tile of K rows is first widened
// to float64 once (widen), so no pair pays for the float32 → float64 conversion again; then each
// call multiplies a block of R rows by C rows of the tile, keeping all R·C f64x2 accumulators and
// the R + C loaded vectors in registers (4 × 2: 8 + 6 of x64's 16 xmm registers), so every
// vector loaded serves C or R products instead of one. Products of float32 values are exact in
// float64 and the sums are float64, as in the reference.
import { I32, V128, laneSum, loadAt, op, promote, simd, sleb32, uleb, vector, whileBelow, type WasmFunction } from './wasm-bytes.js';

/** widen(src, dst, n): n float32 at src → n float64 at dst; n a multiple of 4. */
export function widenFunction(): WasmFunction {
  const src = 0, dst = 1, n = 2, end = 3, v = 4;
  const body = [
    op.get, src, ...simd.load, 4, 0, op.set, v,
    op.get, dst, ...promote(false, [op.get, v]), ...simd.store, 4, 0,
    op.get, dst, ...promote(true, [op.get, v]), ...simd.store, 4, 16,
  ];
  const advance = [op.get, src, op.i32Const, 16, op.i32Add, op.set, src, op.get, dst, op.i32Const, 32, op.i32Add, op.set, dst];
  const code = [
    op.get, src, op.get, n, op.i32Const, 2, op.i32Shl, op.i32Add, op.set, end,
    ...whileBelow(src, end, 16, body, advance), op.end,
  ];
  return { name: 'widen', params: [I32, I32, I32], results: [], body: [...vector([[1, I32], [1, V128]]), ...code] };
}

/**
 * `gram${rows}x${cols}(a, stride, b, n, out, ahead0, ahead1)`: float64 rows at a + r·stride
 * (r < rows) and b + c·stride (c < cols), n elements each (a multiple of 4); writes Σ a_r·b_c to
 * out as float64 [r·cols + c]. With cols = 0 it is `gramDiagonal${rows}`, the pairs r ≤ c of the
 * rows at a among themselves (b unused), written in that order. Two f64x2 steps per iteration,
 * one index for every row. It also reads (and drops) n float32 at ahead0 and at ahead1: the next
 * tile's rows, so they stream in from memory while this tile computes (wasm has no prefetch
 * instruction; a load can trap, so the engine keeps it).
 * `fused`: acc = relaxed_madd(a, b, acc) instead of acc + a·b. The product of two float32 values is
 * exact in float64, so fused or not the sum is rounded once: the results are bit-identical, and
 * one instruction instead of two is what this compute-bound loop needs (relaxed SIMD: Node ≥ 22,
 * or Node 20 with --experimental-wasm-relaxed-simd).
 */
export function blockGramFunction(rows: number, cols: number, fused = false): WasmFunction {
  const a = 0, stride = 1, b = 2, n = 3, out = 4, ahead = 5;
  const index = 7, end = 8, rowAt = 9; // rowAt + r: row r's address; rowAt + rows + c: column row c's
  const x = rowAt + rows + cols, y = cols === 0 ? x : x + rows; // loaded vectors
  const pairs: [number, number][] = [];
  for (let r = 0; r < rows; r++) for (let c = cols === 0 ? r : 0; c < (cols || rows); c++) pairs.push([x + r, y + c]);
  const acc = y + (cols || rows), half = acc + pairs.length; // half, i32: index / 2, the offset into the next tile's float32 rows
  const setRows = (first: number, count: number, at: number): number[] => {
    const code = [op.get, first, op.set, at];
    for (let r = 1; r < count; r++) code.push(op.get, at + r - 1, op.get, stride, op.i32Add, op.set, at + r);
    return code;
  };
  const body: number[] = [op.get, index, op.i32Const, 1, op.i32ShrU, op.set, half];
  for (const next of [ahead, ahead + 1]) body.push(op.get, next, op.get, half, op.i32Add, ...simd.load, 4, 0, op.drop);
  for (const offset of [0, 16]) {
    for (let r = 0; r < rows + cols; r++) body.push(...loadAt(rowAt + r, index, offset), op.set, x + r);
    for (const [p, [u, v]] of pairs.entries()) {
      body.push(...(fused ? [op.get, u, op.get, v, op.get, acc + p, ...simd.f64x2RelaxedMadd] : [op.get, acc + p, op.get, u, op.get, v, ...simd.f64x2Mul, ...simd.f64x2Add]), op.set, acc + p);
    }
  }
  const stores = pairs.flatMap((_, p) => [op.get, out, ...laneSum(acc + p), op.f64Store, 3, ...uleb(p * 8)]);
  const code = [
    ...setRows(a, rows, rowAt), ...(cols > 0 ? setRows(b, cols, rowAt + rows) : []),
    op.get, n, op.i32Const, 3, op.i32Shl, op.set, end,
    ...whileBelow(index, end, 32, body, [op.get, index, op.i32Const, ...sleb32(32), op.i32Add, op.set, index]),
    ...stores, op.end,
  ];
  const locals = vector([[2 + rows + cols, I32], [rows + cols + pairs.length, V128], [1, I32]]);
  const name = cols === 0 ? `gramDiagonal${rows}` : `gram${rows}x${cols}`;
  return { name, params: [I32, I32, I32, I32, I32, I32, I32], results: [], body: [...locals, ...code] };
}
