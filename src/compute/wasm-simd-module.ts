// A small WebAssembly SIMD module, assembled here byte by byte (wasm-bytes.ts). Exports, over an
// imported memory `e.m`, with byte addresses:
//   sumsq(a, n) -> f64    Σ a[i]², n a multiple of 16
//   readsum(a, n) -> f64  Σ a[i] in float32 lanes, n a multiple of 16: the fastest streaming read, for the bandwidth figure
//   widen, gram4x2, gram2x2, gramDiagonal2: the Gram kernels (wasm-gram-kernels.ts), fused multiply-add where the runtime has relaxed SIMD
// sumsq widens each float32 to float64 (f64x2.promote_low_f32x4) before multiplying, so products
// are exact and sums are float64, like the reference; four f64x2 accumulators keep the adds independent.

import { wasm, type WasmMemory } from './wasm-api.js';
import { F64, I32, V128, load, moduleBytes, op, promote, simd, vector, whileBelow, type WasmFunction } from './wasm-bytes.js';
import { blockGramFunction, widenFunction } from './wasm-gram-kernels.js';

/** end = a + n·4 into local `end`, then `body` while a < end, advancing a by `step` bytes. */
function overFloats(a: number, n: number, end: number, step: number, body: number[]): number[] {
  return [op.get, a, op.get, n, op.i32Const, 2, op.i32Shl, op.i32Add, op.set, end, ...whileBelow(a, end, step, body)];
}

/** Sum of the lanes of four f64x2 accumulators in locals acc..acc+3, using `tmp` as scratch. */
function reduceF64(acc: number, tmp: number): number[] {
  return [
    op.get, acc, op.get, acc + 1, ...simd.f64x2Add, op.get, acc + 2, op.get, acc + 3, ...simd.f64x2Add, ...simd.f64x2Add,
    op.tee, tmp, ...simd.f64x2ExtractLane, 0, op.get, tmp, ...simd.f64x2ExtractLane, 1, op.f64Add,
  ];
}

/** sumsq: params a, n; locals end, acc×4, v×2. 16 floats per iteration. */
function sumOfSquares(): WasmFunction {
  const a = 0, n = 1, end = 2, acc = 3, v = acc + 4;
  const body: number[] = [];
  for (let half = 0; half < 2; half++) {
    body.push(...load(a, half * 32), op.set, v, ...load(a, half * 32 + 16), op.set, v + 1);
    [[v, false], [v, true], [v + 1, false], [v + 1, true]].forEach(([x, hi], i) => {
      const wide = promote(hi as boolean, [op.get, x as number]);
      body.push(op.get, acc + i, ...wide, ...wide, ...simd.f64x2Mul, ...simd.f64x2Add, op.set, acc + i);
    });
  }
  const code = [...vector([[1, I32], [4, V128], [2, V128]]), ...overFloats(a, n, end, 64, body), ...reduceF64(acc, v), op.end];
  return { name: 'sumsq', params: [I32, I32], results: [F64], body: code };
}

/** readsum: params a, n; locals end, acc×4 (f32x4). */
function readSum(): WasmFunction {
  const a = 0, n = 1, end = 2, acc = 3;
  const body: number[] = [];
  for (let i = 0; i < 4; i++) body.push(op.get, acc + i, ...load(a, i * 16), ...simd.f32x4Add, op.set, acc + i);
  const total = [op.get, acc, op.get, acc + 1, ...simd.f32x4Add, op.get, acc + 2, op.get, acc + 3, ...simd.f32x4Add, ...simd.f32x4Add, op.set, acc];
  const lanes = [0, 1, 2, 3].flatMap((l) => [op.get, acc, ...simd.f32x4ExtractLane, l, op.f64PromoteF32, ...(l > 0 ? [op.f64Add] : [])]);
  const code = [...vector([[1, I32], [4, V128]]), ...overFloats(a, n, end, 64, body), ...total, ...lanes, op.end];
  return { name: 'readsum', params: [I32, I32], results: [F64], body: code };
}

export interface SimdExports {
  sumsq(a: number, n: number): number;
  readsum(a: number, n: number): number;
  widen(src: number, dst: number, n: number): void;
  gram4x2(a: number, stride: number, b: number, n: number, out: number, ahead0: number, ahead1: number): void;
  gram2x2(a: number, stride: number, b: number, n: number, out: number, ahead0: number, ahead1: number): void;
  gramDiagonal2(a: number, stride: number, b: number, n: number, out: number, ahead0: number, ahead1: number): void;
  /** Whether the Gram kernels use relaxed SIMD's fused multiply-add (wasm-gram-kernels.ts). */
  readonly fused: boolean;
}

/** Elements sumsq and readsum consume per call must be a multiple of this. */
export const SIMD_STRIDE = 16;

function simdModule(fused: boolean, shared: boolean): Uint8Array {
  const grams = [blockGramFunction(4, 2, fused), blockGramFunction(2, 2, fused), blockGramFunction(2, 0, fused)];
  return moduleBytes([sumOfSquares(), readSum(), widenFunction(), ...grams], { shared });
}

export interface SimdOptions {
  /** Fused multiply-add where the runtime has relaxed SIMD (default true). */
  readonly fused?: boolean;
  /** Import a shared memory (a WebAssembly.Memory made with shared: true, maximum 65536). */
  readonly shared?: boolean;
}

/** The compiled module (a WebAssembly.Module, which can be posted to workers), or why this runtime cannot run it. */
export function compileSimd(options: SimdOptions = {}): { module: object; fused: boolean } | { unsupported: string } {
  const shared = options.shared === true;
  let bytes = simdModule(true, shared);
  const fused = options.fused !== false && wasm.validate(bytes);
  if (!fused) bytes = simdModule(false, shared);
  if (!wasm.validate(bytes)) return { unsupported: `this runtime has no WebAssembly SIMD${shared ? ' with shared memory' : ''} (the module does not validate)` };
  return { module: new wasm.Module(bytes), fused };
}

/** The module instantiated over `memory`, or the reason this runtime cannot run it. The Gram
 *  kernels use fused multiply-add where the runtime has relaxed SIMD, unless `fused` says otherwise. */
export function instantiateSimd(memory: WasmMemory, options: SimdOptions = {}): SimdExports | { unsupported: string } {
  const compiled = compileSimd(options);
  if ('unsupported' in compiled) return compiled;
  const instance = new wasm.Instance(compiled.module, { e: { m: memory } });
  return { ...(instance.exports as unknown as Omit<SimdExports, 'fused'>), fused: compiled.fused };
}
