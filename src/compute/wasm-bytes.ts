// WebAssembly binary encoding, just what our hand-assembled SIMD modules use (no build tools).

export const I32 = 0x7f, F64 = 0x7c, V128 = 0x7b;
export const op = {
  block: 0x02, loop: 0x03, brIf: 0x0d, end: 0x0b, drop: 0x1a, get: 0x20, set: 0x21, tee: 0x22, f64Store: 0x39,
  i32Const: 0x41, i32Eqz: 0x45, i32GeU: 0x4f, i32LtU: 0x49, i32Add: 0x6a, i32Shl: 0x74, i32ShrU: 0x76, f64Add: 0xa0, f64PromoteF32: 0xbb,
} as const;
const SIMD = 0xfd;
export const simd = {
  load: [SIMD, 0x00], store: [SIMD, 0x0b], shuffle: [SIMD, 0x0d], f32x4ExtractLane: [SIMD, 0x1f], f64x2ExtractLane: [SIMD, 0x21],
  promoteLow: [SIMD, 0x5f], f32x4Add: [SIMD, 0xe4, 0x01], f64x2Add: [SIMD, 0xf0, 0x01], f64x2Mul: [SIMD, 0xf2, 0x01],
  f64x2RelaxedMadd: [SIMD, 0x87, 0x02], // relaxed SIMD: a·b + c, fused or not as the engine likes
} as const;
/** Lanes 2–3 of an f32x4 moved to lanes 0–1, so promote_low reaches them. */
export const HIGH_HALF = [8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15];

export function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}
export const sleb32 = (n: number): number[] => (n >= 0 && n < 64 ? [n] : n >= 64 && n < 8192 ? [(n & 0x7f) | 0x80, n >> 7] : (() => { throw new RangeError('sleb32 range'); })());
export const section = (id: number, body: number[]): number[] => [id, ...uleb(body.length), ...body];
export const vector = (items: number[][]): number[] => [...uleb(items.length), ...items.flat()];
/** v128.load from the address in `local` plus a constant byte offset. */
export const load = (local: number, offset: number): number[] => [op.get, local, ...simd.load, 4, ...uleb(offset)];
/** v128.load from local `base` + local `index` + a constant byte offset. */
export const loadAt = (base: number, index: number, offset: number): number[] => [op.get, base, op.get, index, op.i32Add, ...simd.load, 4, ...uleb(offset)];
export const promote = (hi: boolean, v: number[]): number[] => (hi ? [...v, ...v, ...simd.shuffle, ...HIGH_HALF, ...simd.promoteLow] : [...v, ...simd.promoteLow]);
/** Sum of the two lanes of the f64x2 in `local`. */
export const laneSum = (local: number): number[] => [op.get, local, ...simd.f64x2ExtractLane, 0, op.get, local, ...simd.f64x2ExtractLane, 1, op.f64Add];

/** `while (index < end) { body; index += step }`, skipped when index ≥ end at the start. */
export function whileBelow(index: number, end: number, step: number, body: number[], advance: number[] = [op.get, index, op.i32Const, ...sleb32(step), op.i32Add, op.set, index]): number[] {
  return [
    op.block, 0x40, op.get, index, op.get, end, op.i32GeU, op.brIf, 0,
    op.loop, 0x40, ...body, ...advance, op.get, index, op.get, end, op.i32LtU, op.brIf, 0, op.end,
    op.end,
  ];
}

export interface WasmFunction {
  readonly name: string;
  readonly params: number[];
  readonly results: number[];
  /** Local declarations then code, ending in `end`. */
  readonly body: number[];
}

/** A module importing memory "e"."m" and exporting each function under its name. `shared`: the
 *  import is a shared memory (threads), which must declare a maximum: 65536 pages, 4 GiB. */
export function moduleBytes(functions: readonly WasmFunction[], memory: { readonly shared?: boolean } = {}): Uint8Array {
  const signature = (f: WasmFunction): string => `${f.params.join(',')}>${f.results.join(',')}`;
  const signatures = [...new Set(functions.map(signature))];
  const types = vector(signatures.map((s) => {
    const [params, results] = s.split('>').map((list) => (list ? list.split(',').map(Number) : [])) as [number[], number[]];
    return [0x60, ...vector(params.map((p) => [p])), ...vector(results.map((r) => [r]))];
  }));
  const limits = memory.shared ? [0x03, 0x01, ...uleb(65536)] : [0x00, 0x01]; // flags (1: has maximum, 2: shared), min 1 page[, max]
  const imports = vector([[1, 0x65, 1, 0x6d, 0x02, ...limits]]); // "e"."m": memory
  const indices = vector(functions.map((f) => uleb(signatures.indexOf(signature(f)))));
  const name = (s: string): number[] => [s.length, ...[...s].map((c) => c.charCodeAt(0))];
  const exports = vector(functions.map((f, i) => [...name(f.name), 0x00, ...uleb(i)]));
  const bodies = functions.map((f) => [...uleb(f.body.length), ...f.body]);
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, types), ...section(2, imports), ...section(3, indices), ...section(7, exports), ...section(10, vector(bodies)),
  ]);
}
