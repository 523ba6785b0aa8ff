// Byte ranges of one growable WebAssembly.Memory: reuse freed ranges of the same size (blocks of a
// run come in a few sizes), else take fresh space at the end, growing the memory as needed.

import type { OwnedBlock } from './reduction-backend.js';
import { wasm, type WasmMemory } from './wasm-api.js';

const ALIGN = 64; // a cache line: v128 loads of a row start never straddle one

export class WasmArena {
  readonly memory: WasmMemory;
  private end = ALIGN; // address 0 stays unused
  private readonly free = new Map<number, number[]>(); // size → offsets

  /** `shared`: a shared memory that workers can run the same module over (growing it replaces
   *  `buffer` with a longer one but leaves earlier views valid over their length). */
  constructor(options: { readonly shared?: boolean } = {}) {
    this.memory = new wasm.Memory({ initial: 16, maximum: 65536, ...(options.shared ? { shared: true } : {}) });
  }

  allocate(bytes: number): number {
    const size = Math.ceil(Math.max(bytes, 1) / ALIGN) * ALIGN;
    const reused = this.free.get(size)?.pop();
    if (reused !== undefined) return reused;
    const offset = this.end;
    this.end += size;
    const short = this.end - this.memory.buffer.byteLength;
    if (short > 0) {
      if (this.end > 2 ** 32) throw new RangeError(`WebAssembly memory is limited to 4 GiB; ${this.end} bytes requested`);
      this.memory.grow(Math.ceil(short / 65536));
    }
    return offset;
  }

  release(offset: number, bytes: number): void {
    const size = Math.ceil(Math.max(bytes, 1) / ALIGN) * ALIGN;
    const list = this.free.get(size) ?? [];
    list.push(offset);
    this.free.set(size, list);
  }

  /** A gradient block (K rows × length float32) in this memory; its `values` view is re-created on each read. */
  block(gradients: number, length: number): OwnedBlock {
    const bytes = gradients * length * 4;
    const offset = this.allocate(bytes);
    let released = false;
    const floats = (): Float32Array => this.floats(offset, gradients * length);
    return {
      gradients,
      length,
      get values() {
        return floats();
      },
      release: () => {
        if (!released) this.release(offset, bytes);
        released = true;
      },
    };
  }

  /** A float32 view; re-create it after any allocate (growing detaches the old buffer). */
  floats(offset: number, count: number): Float32Array {
    return new Float32Array(this.memory.buffer, offset, count);
  }

  /** A float64 view (offset a multiple of 8); re-create it after any allocate, as floats(). */
  doubles(offset: number, count: number): Float64Array {
    return new Float64Array(this.memory.buffer, offset, count);
  }
}
