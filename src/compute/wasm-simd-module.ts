// A small WebAssembly SIMD module, assembled here byte by byte (no build tools). Exports, over
// an imported memory `e.m`, with n a multiple of 16 floats and byte addresses:
//   dot(a, b, n) -> f64   Σ a[i]·b[i]
//   sumsq(a, n)  -> f64   Σ a[i]²
//   readsum(a, n) -> f64  Σ a[i] in float32 lanes: the fastest streaming read, for the bandwidth figure
// dot and sumsq widen each float32 to float64 (f64x2.promote_low_f32x4) before multiplying, so
// products are exact and sums are float64, like the reference; four f64x2 accumulators keep
// the adds independent.

import { wasm, type WasmMemory } from './wasm-api.js';

const I32 = 0x7f, F64 = 0x7c, V128 = 0x7b;
const op = {
  block: 0x02, loop: 0x03, brIf: 0x0d, end: 0x0b, get: 0x20, set: 0x21, tee: 0x22,
  i32Const: 0x41, i32GeU: 0x4f, i32LtU: 0x49, i32Add: 0x6a, i32Shl: 0x74, f64Add: 0xa0, f64PromoteF32: 0xbb,
} as const;
const SIMD = 0xfd;
const simd = {
  load: [SIMD, 0x00], shuffle: [SIMD, 0x0d], f32x4ExtractLane: [SIMD, 0x1f], f64x2ExtractLane: [SIMD, 0x21],
  promoteLow: [SIMD, 0x5f], f32x4Add: [SIMD, 0xe4, 0x01], f64x2Add: [SIMD, 0xf0, 0x01], f64x2Mul: [SIMD, 0xf2, 0x01],
} as const;
/** Lanes 2–3 of an f32x4 moved to lanes 0–1, so promote_low reaches them. */
const HIGH_HALF = [8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15];

function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}
const sleb32 = (n: number): number[] => (n >= 0 && n < 64 ? [n] : n >= 64 && n < 8192 ? [(n & 0x7f) | 0x80, n >> 7] : (() => { throw new RangeError('sleb32 range'); })());
const section = (id: number, body: number[]): number[] => [id, ...uleb(body.length), ...body];
const vector = (items: number[][]): number[] => [...uleb(items.length), ...items.flat()];
const load = (local: number, offset: number): number[] => [op.get, local, ...simd.load, 4, ...uleb(offset)];
const promote = (hi: boolean, v: number[]): number[] => (hi ? [...v, ...v, ...simd.shuffle, ...HIGH_HALF, ...simd.promoteLow] : [...v, ...simd.promoteLow]);

/** end = a + n·4 into local `end`; then `loop` runs while a < end, advancing a (and b) by `step` bytes. */
function loopOver(pointers: number[], nLocal: number, endLocal: number, step: number, body: number[]): number[] {
  const first = pointers[0] as number;
  const advance = pointers.flatMap((p) => [op.get, p, op.i32Const, ...sleb32(step), op.i32Add, op.set, p]);
  return [
    op.get, first, op.get, nLocal, op.i32Const, 2, op.i32Shl, op.i32Add, op.set, endLocal,
    op.block, 0x40, op.get, first, op.get, endLocal, op.i32GeU, op.brIf, 0,
    op.loop, 0x40, ...body, ...advance, op.get, first, op.get, endLocal, op.i32LtU, op.brIf, 0, op.end,
    op.end,
  ];
}

/** Sum of the lanes of four f64x2 accumulators in locals acc..acc+3, using `tmp` as scratch. */
function reduceF64(acc: number, tmp: number): number[] {
  return [
    op.get, acc, op.get, acc + 1, ...simd.f64x2Add, op.get, acc + 2, op.get, acc + 3, ...simd.f64x2Add, ...simd.f64x2Add,
    op.tee, tmp, ...simd.f64x2ExtractLane, 0, op.get, tmp, ...simd.f64x2ExtractLane, 1, op.f64Add,
  ];
}

/** dot (b ≠ null) or sumsq: params a, b?, n; locals end, acc×4, va, vb. 16 floats per iteration. */
function products(dot: boolean): number[] {
  const a = 0, b = dot ? 1 : 0, n = dot ? 2 : 1, end = n + 1, acc = end + 1, va = acc + 4, vb = va + 1;
  const body: number[] = [];
  for (let block = 0; block < 2; block++) {
    const offset = block * 32;
    body.push(...load(a, offset), op.set, va, ...(dot ? [...load(b, offset), op.set, vb] : []));
    body.push(...load(a, offset + 16), op.set, vb + 1, ...(dot ? [...load(b, offset + 16), op.set, vb + 2] : []));
    const x0 = [op.get, va], y0 = [op.get, dot ? vb : va], x1 = [op.get, vb + 1], y1 = [op.get, dot ? vb + 2 : vb + 1];
    const lanes: [number[], number[], boolean][] = [[x0, y0, false], [x0, y0, true], [x1, y1, false], [x1, y1, true]];
    lanes.forEach(([x, y, hi], i) => {
      body.push(op.get, acc + i, ...promote(hi, x), ...promote(hi, y), ...simd.f64x2Mul, ...simd.f64x2Add, op.set, acc + i);
    });
  }
  const locals = [[1, I32], [4, V128], [dot ? 4 : 3, V128]];
  return [...vector(locals), ...loopOver(dot ? [a, b] : [a], n, end, 64, body), ...reduceF64(acc, va), op.end];
}

/** readsum: params a, n; locals end, acc×4 (f32x4). */
function readSum(): number[] {
  const a = 0, n = 1, end = 2, acc = 3;
  const body: number[] = [];
  for (let i = 0; i < 4; i++) body.push(op.get, acc + i, ...load(a, i * 16), ...simd.f32x4Add, op.set, acc + i);
  const total = [op.get, acc, op.get, acc + 1, ...simd.f32x4Add, op.get, acc + 2, op.get, acc + 3, ...simd.f32x4Add, ...simd.f32x4Add, op.set, acc];
  const lanes = [0, 1, 2, 3].flatMap((l) => [op.get, acc, ...simd.f32x4ExtractLane, l, op.f64PromoteF32, ...(l > 0 ? [op.f64Add] : [])]);
  return [...vector([[1, I32], [4, V128]]), ...loopOver([a], n, end, 64, body), ...total, ...lanes, op.end];
}

function moduleBytes(): Uint8Array {
  const types = vector([[0x60, 3, I32, I32, I32, 1, F64], [0x60, 2, I32, I32, 1, F64]]);
  const imports = vector([[1, 0x65, 1, 0x6d, 0x02, 0x00, 0x01]]); // "e"."m": memory, min 1 page
  const functions = vector([[0], [1], [1]]);
  const name = (s: string): number[] => [s.length, ...[...s].map((c) => c.charCodeAt(0))];
  const exports = vector([[...name('dot'), 0x00, 0], [...name('sumsq'), 0x00, 1], [...name('readsum'), 0x00, 2]]);
  const bodies = [products(true), products(false), readSum()].map((f) => [...uleb(f.length), ...f]);
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, types), ...section(2, imports), ...section(3, functions), ...section(7, exports), ...section(10, vector(bodies)),
  ]);
}

export interface SimdExports {
  dot(a: number, b: number, n: number): number;
  sumsq(a: number, n: number): number;
  readsum(a: number, n: number): number;
}

/** Elements each export consumes per call must be a multiple of this. */
export const SIMD_STRIDE = 16;

/** The module instantiated over `memory`, or the reason this runtime cannot run it. */
export function instantiateSimd(memory: WasmMemory): SimdExports | { unsupported: string } {
  const bytes = moduleBytes();
  if (!wasm.validate(bytes)) return { unsupported: 'this runtime has no WebAssembly SIMD (the module does not validate)' };
  const instance = new wasm.Instance(new wasm.Module(bytes), { e: { m: memory } });
  return instance.exports as unknown as SimdExports;
}
