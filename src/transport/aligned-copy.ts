// Shard payloads into aligned, reused typed arrays.
//
// grpc-js hands a `bytes` field as a Buffer view into the received frame, at whatever offset the
// protobuf framing left it (9 or 10 in practice): `new Float32Array(buf.buffer, buf.byteOffset)`
// throws there. One memcpy into a reused, aligned buffer costs ≈ 0.09 ms per 4 MiB (DESIGN.md), far
// less than allocating per chunk. fp16 and bf16 are widened to float32 exactly (every half value,
// ±0, subnormals, ±Inf and NaN payloads bit for bit), so reductions see one dtype.
//
// The wire is little-endian (what torch writes on every platform it ships for); so are the typed
// arrays here on the platforms Node supports in practice. A big-endian host is refused, not misread.
import type { DType__Output } from './generated/noisescope/v1/DType.js';

export type WireDtype = Exclude<DType__Output, 'DTYPE_UNSPECIFIED'>;

/** Bytes per element on the wire. */
export const WIRE_DTYPE_BYTES: Readonly<Record<WireDtype, number>> = { DTYPE_F32: 4, DTYPE_F16: 2, DTYPE_BF16: 2 };

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** IEEE 754 binary16 bits → binary32 bits; exact for every input. */
export function float16BitsToFloat32Bits(half: number): number {
  const sign = (half & 0x8000) << 16;
  const exponent = (half >>> 10) & 0x1f;
  const mantissa = half & 0x3ff;
  if (exponent === 0x1f) return (sign | 0x7f800000 | (mantissa << 13)) >>> 0; // ±Inf, NaN keeping its payload
  if (exponent !== 0) return (sign | ((exponent + 127 - 15) << 23) | (mantissa << 13)) >>> 0;
  if (mantissa === 0) return sign >>> 0; // ±0
  // Subnormal (mantissa · 2^-24): normalise so the leading 1 becomes the implicit bit.
  let shifted = mantissa;
  let shifts = 0;
  while ((shifted & 0x400) === 0) {
    shifted <<= 1;
    shifts++;
  }
  return (sign | ((127 - 15 + 1 - shifts) << 23) | ((shifted & 0x3ff) << 13)) >>> 0;
}

let float16Table: Uint32Array | undefined;

/** All 65536 conversions, built once (256 KiB): one table load per element beats branching. */
function float16ToFloat32Table(): Uint32Array {
  if (float16Table === undefined) {
    float16Table = new Uint32Array(0x10000);
    for (let half = 0; half < 0x10000; half++) float16Table[half] = float16BitsToFloat32Bits(half);
  }
  return float16Table;
}

/**
 * Reused aligned buffers for one consumer (one per ingest worker, not shared across awaits).
 * Every returned view is valid until the next call on the same instance.
 */
export class AlignedPayloads {
  private float32Buffer = new Float32Array(0);
  private uint16Buffer = new Uint16Array(0);

  /** fp32 bytes copied once into aligned float32s. */
  float32(bytes: Uint8Array): Float32Array {
    const length = elementCount(bytes, 4, 'float32');
    const target = this.float32Capacity(length);
    new Uint8Array(target.buffer, target.byteOffset, bytes.byteLength).set(bytes);
    return target;
  }

  /** fp16 or bf16 bytes copied once into aligned 16-bit words, undecoded. */
  uint16(bytes: Uint8Array): Uint16Array {
    const length = elementCount(bytes, 2, 'a 16-bit float');
    if (this.uint16Buffer.length < length) this.uint16Buffer = new Uint16Array(grownCapacity(this.uint16Buffer.length, length));
    const target = this.uint16Buffer.subarray(0, length);
    new Uint8Array(target.buffer, target.byteOffset, bytes.byteLength).set(bytes);
    return target;
  }

  /** Any wire dtype as float32: fp32 copied, fp16/bf16 copied then widened exactly. */
  toFloat32(bytes: Uint8Array, dtype: WireDtype): Float32Array {
    if (dtype === 'DTYPE_F32') return this.float32(bytes);
    const halves = this.uint16(bytes);
    const target = this.float32Capacity(halves.length);
    // Written as bits so NaN payloads survive (a Float32Array store may canonicalise them).
    const bits = new Uint32Array(target.buffer, target.byteOffset, target.length);
    if (dtype === 'DTYPE_BF16') widenBfloat16(halves, bits);
    else widenFloat16(halves, bits, float16ToFloat32Table());
    return target;
  }

  private float32Capacity(length: number): Float32Array {
    if (this.float32Buffer.length < length) this.float32Buffer = new Float32Array(grownCapacity(this.float32Buffer.length, length));
    return this.float32Buffer.subarray(0, length);
  }
}

// Two halves per 32-bit load (the low one first: little-endian) ran ≈ 1.4× faster than one per load.
// `halves` starts at byte 0 of its own buffer (AlignedPayloads allocates it), so the word view is aligned.
function widenBfloat16(halves: Uint16Array, bits: Uint32Array): void {
  const pairs = new Uint32Array(halves.buffer, halves.byteOffset, halves.length >>> 1);
  for (let j = 0; j < pairs.length; j++) {
    const word = pairs[j] as number;
    bits[2 * j] = word << 16;
    bits[2 * j + 1] = word & 0xffff0000;
  }
  if (halves.length & 1) bits[halves.length - 1] = (halves[halves.length - 1] as number) << 16;
}

function widenFloat16(halves: Uint16Array, bits: Uint32Array, table: Uint32Array): void {
  const pairs = new Uint32Array(halves.buffer, halves.byteOffset, halves.length >>> 1);
  for (let j = 0; j < pairs.length; j++) {
    const word = pairs[j] as number;
    bits[2 * j] = table[word & 0xffff] as number;
    bits[2 * j + 1] = table[word >>> 16] as number;
  }
  if (halves.length & 1) bits[halves.length - 1] = table[halves[halves.length - 1] as number] as number;
}

function elementCount(bytes: Uint8Array, size: number, what: string): number {
  if (!LITTLE_ENDIAN) throw new Error('noisescope reads little-endian shard payloads; this host is big-endian');
  if (bytes.byteLength % size !== 0) {
    throw new RangeError(`${bytes.byteLength} bytes is not a whole number of ${what} values (${size} bytes each)`);
  }
  return bytes.byteLength / size;
}

/** Doubling keeps a stream of growing chunks to O(log n) allocations. */
function grownCapacity(current: number, needed: number): number {
  return Math.max(needed, current * 2);
}
