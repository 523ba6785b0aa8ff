// Shard payloads into aligned buffers, and fp16/bf16 → float32 on all 65536 bit patterns,
// against numpy and torch (the hook's own conversions) and against the IEEE formula.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { AlignedPayloads, float16BitsToFloat32Bits } from '../../src/transport/aligned-copy.js';

const PYTHON = join(import.meta.dirname, '..', '..', '.venv', 'bin', 'python');
const ALL_HALVES = Uint16Array.from({ length: 0x10000 }, (_, i) => i);

// numpy keeps a signalling NaN's payload bit for bit; torch (hardware F16C) sets the quiet bit.
const REFERENCE_SCRIPT = `
import sys, numpy as np, torch
halves = np.arange(0x10000, dtype=np.uint32).astype(np.uint16)
as_torch = lambda dtype: torch.from_numpy(halves.view(np.int16).copy()).view(dtype).float().numpy()
out = [halves.view(np.float16).astype(np.float32), as_torch(torch.float16), as_torch(torch.bfloat16)]
sys.stdout.buffer.write(b''.join(a.view(np.uint32).tobytes() for a in out))
`;

let reference: { numpyF16: Uint32Array; torchF16: Uint32Array; torchBf16: Uint32Array };
beforeAll(() => {
  const raw = execFileSync(PYTHON, ['-c', REFERENCE_SCRIPT], { maxBuffer: 4 << 20 });
  const words = new Uint32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
  expect(words.length).toBe(3 * 0x10000);
  reference = { numpyF16: words.subarray(0, 0x10000), torchF16: words.subarray(0x10000, 0x20000), torchBf16: words.subarray(0x20000) };
}, 60_000);

/** The payload as grpc-js hands it: a view into a larger buffer at an odd offset. */
function atOffset(bytes: Uint8Array, offset: number): Buffer {
  const frame = Buffer.alloc(offset + bytes.byteLength + 3, 0xee);
  frame.set(bytes, offset);
  return frame.subarray(offset, offset + bytes.byteLength);
}

function bitsOf(values: Float32Array): Uint32Array {
  return new Uint32Array(values.buffer, values.byteOffset, values.length);
}

/** binary16 by the IEEE formula, in float64 arithmetic (independent of bit tricks). */
function float16Value(half: number): number {
  const sign = half & 0x8000 ? -1 : 1;
  const exponent = (half >> 10) & 0x1f;
  const mantissa = half & 0x3ff;
  if (exponent === 0x1f) return mantissa === 0 ? sign * Infinity : Number.NaN;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

describe('fp16 → float32', () => {
  it('matches numpy bit for bit on every half value, NaN payloads included', () => {
    const decoded = bitsOf(new AlignedPayloads().toFloat32(atOffset(new Uint8Array(ALL_HALVES.buffer), 9), 'DTYPE_F16'));
    expect(decoded).toEqual(reference.numpyF16);
  });

  it('matches torch on every half value (NaN for NaN: torch quiets signalling NaNs)', () => {
    const decoded = new AlignedPayloads().toFloat32(atOffset(new Uint8Array(ALL_HALVES.buffer), 10), 'DTYPE_F16');
    const torchValues = new Float32Array(reference.torchF16.buffer, reference.torchF16.byteOffset, 0x10000);
    const mismatches = ALL_HALVES.filter((h) => !Object.is(decoded[h], torchValues[h]));
    expect([...mismatches]).toEqual([]);
  });

  it('equals the IEEE formula on every half value: ±0 signed, subnormals exact, ±Inf, NaN', () => {
    const mismatches = [...ALL_HALVES].filter((h) => {
      const bits = new Uint32Array([float16BitsToFloat32Bits(h)]);
      return !Object.is(new Float32Array(bits.buffer)[0], float16Value(h));
    });
    expect(mismatches).toEqual([]);
    expect(Object.is(new Float32Array(new Uint32Array([float16BitsToFloat32Bits(0x8000)]).buffer)[0], -0)).toBe(true);
    expect(float16BitsToFloat32Bits(0x0001)).toBe(0x33800000); // 2^-24, the smallest subnormal
    expect(float16BitsToFloat32Bits(0x7c00)).toBe(0x7f800000);
  });
});

describe('bf16 → float32', () => {
  it('matches torch bit for bit on every bfloat16 value', () => {
    const decoded = bitsOf(new AlignedPayloads().toFloat32(atOffset(new Uint8Array(ALL_HALVES.buffer), 9), 'DTYPE_BF16'));
    expect(decoded).toEqual(reference.torchBf16);
  });
});

describe('widening odd-length payloads', () => {
  it('converts the last element of an odd count like the others (fp16 and bf16)', () => {
    const halves = ALL_HALVES.subarray(0x3bf0, 0x3bf0 + 7); // 7 halves around 1.0
    const payloads = new AlignedPayloads();
    const f16 = [...bitsOf(payloads.toFloat32(atOffset(new Uint8Array(halves.buffer, halves.byteOffset, 14), 9), 'DTYPE_F16'))];
    expect(f16).toEqual([...reference.numpyF16.subarray(0x3bf0, 0x3bf0 + 7)]);
    const bf16 = [...bitsOf(payloads.toFloat32(atOffset(new Uint8Array(halves.buffer, halves.byteOffset, 14), 10), 'DTYPE_BF16'))];
    expect(bf16).toEqual([...reference.torchBf16.subarray(0x3bf0, 0x3bf0 + 7)]);
  });
});

describe('aligned payload copies', () => {
  it('reads float32 payloads at any byte offset into an aligned view with the same values', () => {
    const values = Float32Array.from({ length: 1027 }, (_, i) => Math.fround(Math.sin(i) * 1e3));
    const payloads = new AlignedPayloads();
    for (const offset of [0, 1, 2, 3, 9, 10]) {
      const view = payloads.float32(atOffset(new Uint8Array(values.buffer), offset));
      expect(view.byteOffset % 4).toBe(0);
      expect(view).toEqual(values);
    }
  });

  it('reuses its buffers for chunks that fit and grows for larger ones', () => {
    const payloads = new AlignedPayloads();
    const first = payloads.float32(atOffset(new Uint8Array(4096), 9));
    const smaller = payloads.toFloat32(atOffset(new Uint8Array(2048), 9), 'DTYPE_F32');
    expect(smaller.buffer).toBe(first.buffer);
    expect(smaller.length).toBe(512);
    const widened = payloads.toFloat32(atOffset(new Uint8Array(2048), 9), 'DTYPE_BF16');
    expect(widened.buffer).toBe(first.buffer); // 1024 floats still fit
    const larger = payloads.float32(atOffset(new Uint8Array(8192), 9));
    expect(larger.buffer).not.toBe(first.buffer);
    expect(larger.length).toBe(2048);
  });

  it('refuses a payload that is not a whole number of elements', () => {
    const payloads = new AlignedPayloads();
    expect(() => payloads.float32(new Uint8Array(6))).toThrow(/not a whole number of float32/);
    expect(() => payloads.toFloat32(new Uint8Array(3), 'DTYPE_F16')).toThrow(RangeError);
  });
});
