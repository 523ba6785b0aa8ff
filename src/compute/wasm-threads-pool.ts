// Worker threads that run the wasm-simd module over one shared WebAssembly.Memory. Each worker
// instantiates the same compiled module (posted to it, not recompiled) and sleeps in Atomics.wait
// on its control block, a few words in the shared memory; the calling thread writes a command,
// bumps the sequence number and notifies, then awaits the worker's done word with
// Atomics.waitAsync. No message per call, and no worker .js file: the worker is an `eval` string
// built from self-contained functions' source, so it runs the same under vitest (TypeScript
// sources) and from dist/.
import { Worker } from 'node:worker_threads';
import type { WasmMemory } from './wasm-api.js';
import { gramPairs } from './wasm-simd-backend.js';
import type { SimdExports } from './wasm-simd-module.js';
import { chunkStart, claimGramChunks, claimSquareChunks } from './wasm-threads-chunks.js';

/** Bytes of one worker's control block (allocate them 8-aligned in the shared memory). */
export const CONTROL_BYTES = 512;
const SEQ = 0, DONE = 1, STATUS = 2, COMMAND = 3, ARGS = 4, MESSAGE_LENGTH = 15; // Int32 indices
const MESSAGE_BYTE = 128; // an error message (UTF-8)
const START_TIMEOUT_MS = 10_000;

export const Command = { noop: 0, gram: 1, sumsq: 2 } as const;

// Runs in the worker: `sources` are the self-contained functions it calls. Arguments are unsigned
// 32-bit (addresses reach 4 GiB).
function workerMain(sources: { gramPairs: string; chunkStart: string; claimGramChunks: string; claimSquareChunks: string }, layout: { SEQ: number; DONE: number; STATUS: number; COMMAND: number; ARGS: number; MESSAGE_LENGTH: number; MESSAGE_BYTE: number; CONTROL_BYTES: number }): void {
  const { workerData } = require('node:worker_threads') as { workerData: { module: object; memory: WasmMemory; control: number } };
  const { module, memory, control } = workerData;
  const wasmApi = (globalThis as unknown as { WebAssembly: { Instance: new (m: object, i: object) => { exports: object } } }).WebAssembly;
  const simd = new wasmApi.Instance(module, { e: { m: memory } }).exports as SimdExports;
  const compile = <F>(source: string): F => new Function(`return (${source});`)() as F;
  const pairsOf = compile<typeof gramPairs>(sources.gramPairs), start = compile<typeof chunkStart>(sources.chunkStart);
  const gramChunks = compile<typeof claimGramChunks>(sources.claimGramChunks), squareChunks = compile<typeof claimSquareChunks>(sources.claimSquareChunks);
  const ctl = new Int32Array(memory.buffer, control, layout.MESSAGE_BYTE / 4); // never moves: growing keeps old views valid
  const views = {
    floats: (offset: number, count: number) => new Float32Array(memory.buffer, offset, count),
    doubles: (offset: number, count: number) => new Float64Array(memory.buffer, offset, count),
  };
  const arg = (i: number): number => (ctl[layout.ARGS + i] as number) >>> 0;
  const run = (command: number): void => {
    if (command === 0) return;
    if (command === 1) {
      const k = arg(0), n = arg(1);
      const block = { gradients: k, length: n, values: views.floats(arg(2), k * n) };
      const areas = { narrow: arg(7), wide: arg(8), out: arg(9) };
      gramChunks(pairsOf, start, simd, views, areas, new Int32Array(memory.buffer, arg(6), 1), { block, tile: arg(3), chunks: arg(4), slots: arg(5) });
      return;
    }
    if (command === 2) {
      squareChunks(simd, views, new Int32Array(memory.buffer, arg(4), 1), arg(0), arg(1), arg(2), arg(3), arg(5));
      return;
    }
    throw new RangeError(`unknown command ${command}`);
  };
  let seen = Atomics.load(ctl, layout.DONE); // SEQ ≠ DONE: a command posted before this worker started
  for (;;) {
    Atomics.wait(ctl, layout.SEQ, seen);
    const seq = Atomics.load(ctl, layout.SEQ);
    if (seq === seen) continue;
    seen = seq;
    let status = 0;
    try {
      run(Atomics.load(ctl, layout.COMMAND));
    } catch (error) {
      status = 1;
      const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
      const bytes = new TextEncoder().encode(text).subarray(0, layout.CONTROL_BYTES - layout.MESSAGE_BYTE);
      new Uint8Array(memory.buffer, control + layout.MESSAGE_BYTE, bytes.length).set(bytes);
      Atomics.store(ctl, layout.MESSAGE_LENGTH, bytes.length);
    }
    Atomics.store(ctl, layout.STATUS, status);
    Atomics.store(ctl, layout.DONE, seq);
    Atomics.notify(ctl, layout.DONE);
  }
}

const SOURCES = { gramPairs: gramPairs.toString(), chunkStart: chunkStart.toString(), claimGramChunks: claimGramChunks.toString(), claimSquareChunks: claimSquareChunks.toString() };
const WORKER_SOURCE = `(${workerMain.toString()})(${JSON.stringify(SOURCES)}, ${JSON.stringify({ SEQ, DONE, STATUS, COMMAND, ARGS, MESSAGE_LENGTH, MESSAGE_BYTE, CONTROL_BYTES })});`;

type WaitAsync = (array: Int32Array, index: number, value: number, timeout?: number) => { async: false; value: string } | { async: true; value: Promise<string> };
const waitAsync = (Atomics as unknown as { waitAsync?: WaitAsync }).waitAsync;

interface Slot {
  worker: Worker;
  /** Settles (never rejects) with why the worker stopped, once it has. */
  stopped: Promise<Error>;
  dead: Error | undefined;
  seq: number;
}

export class WasmThreadPool {
  private readonly slots: Slot[] = [];
  private disposed = false;

  /** Starts one worker per control block and waits until each runs; rejects when one cannot start. */
  static async start(module: object, memory: WasmMemory, controls: readonly number[], timeoutMs: number): Promise<WasmThreadPool> {
    if (waitAsync === undefined) throw new Error('this runtime has no Atomics.waitAsync (Node ≥ 16 has it)');
    const pool = new WasmThreadPool(module, memory, controls, timeoutMs);
    try {
      await Promise.all(pool.slots.map((slot, i) => pool.online(slot, i)));
    } catch (error) {
      pool.dispose();
      throw error;
    }
    return pool;
  }

  private constructor(
    private readonly module: object,
    private readonly memory: WasmMemory,
    private readonly controls: readonly number[],
    private readonly timeoutMs: number,
  ) {
    for (let i = 0; i < controls.length; i++) this.slots.push(this.spawn(i));
  }

  /** The live workers (a test watches them exit). */
  get workers(): readonly Worker[] {
    return this.slots.map((s) => s.worker);
  }

  get size(): number {
    return this.slots.length;
  }

  /** Runs `command` on worker `index` with unsigned 32-bit `args`; resolves when it is done.
   *  Rejects, naming the worker and the cause, when the command throws, the worker dies (it is
   *  replaced for the next call) or it takes longer than the timeout (it is terminated). */
  async run(index: number, command: number, args: readonly number[]): Promise<void> {
    if (this.disposed) throw new Error('wasm-simd-threads: the backend was disposed');
    let slot = this.slots[index];
    if (slot === undefined) throw new RangeError(`no worker ${index}: the pool has ${this.slots.length}`);
    if (slot.dead) {
      slot = this.spawn(index);
      this.slots[index] = slot;
      await this.online(slot, index); // the call's timeout should not count the start-up
    }
    const ctl = this.control(index);
    for (const [i, value] of args.entries()) ctl[ARGS + i] = value | 0;
    Atomics.store(ctl, COMMAND, command);
    const previous = slot.seq; // = DONE: the worker has finished everything before
    slot.seq = (previous + 1) | 0;
    Atomics.store(ctl, SEQ, slot.seq);
    Atomics.notify(ctl, SEQ);
    const waited = (waitAsync as WaitAsync)(ctl, DONE, previous, this.timeoutMs); // its own timeout too: no wait left pending forever after a death
    // A ref'd timer: it bounds the wait, and keeps the process alive while only waitAsync is pending.
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timed-out'>((resolve) => (timer = setTimeout(() => resolve('timed-out'), this.timeoutMs)));
    const outcome = waited.async ? await Promise.race([waited.value, timedOut, slot.stopped]) : waited.value;
    clearTimeout(timer);
    if (outcome instanceof Error) throw this.abandon(index, outcome);
    if (outcome === 'timed-out') {
      await slot.worker.terminate(); // stopped before the call settles: it must not claim the next call's chunks
      throw this.abandon(index, new Error(`wasm-simd-threads: worker ${index} did not finish within ${this.timeoutMs} ms; it was stopped`));
    }
    if (Atomics.load(ctl, STATUS) !== 0) {
      const length = Atomics.load(ctl, MESSAGE_LENGTH);
      const text = new TextDecoder().decode(new Uint8Array(this.memory.buffer, this.controls[index] as number + MESSAGE_BYTE, length).slice());
      throw new Error(`wasm-simd-threads: worker ${index} failed: ${text}`);
    }
  }

  /** Terminates every worker (idempotent). */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const slot of this.slots) void slot.worker.terminate();
  }

  private control(index: number): Int32Array {
    return new Int32Array(this.memory.buffer, this.controls[index] as number, MESSAGE_BYTE / 4);
  }

  private spawn(index: number): Slot {
    const ctl = this.control(index);
    Atomics.store(ctl, DONE, Atomics.load(ctl, SEQ)); // nothing pending for the new worker
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { module: this.module, memory: this.memory, control: this.controls[index] } });
    worker.unref();
    const slot: Slot = { worker, stopped: Promise.resolve(new Error()), dead: undefined, seq: Atomics.load(ctl, SEQ) };
    slot.stopped = new Promise<Error>((resolve) => {
      const stop = (error: Error): void => {
        slot.dead ??= error;
        resolve(slot.dead);
      };
      worker.once('error', (error) => stop(new Error(`wasm-simd-threads: worker ${index} threw: ${error.message}`)));
      worker.once('exit', (code) => stop(new Error(`wasm-simd-threads: worker ${index} exited (code ${code})`)));
    });
    return slot;
  }

  private online(slot: Slot, index: number): Promise<void> {
    return new Promise((resolve, reject) => {
      // Ref'd: the workers are unref()'d, so without it a process waiting only for them would exit.
      const timer = setTimeout(() => reject(new Error(`wasm-simd-threads: worker ${index} did not start within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
      slot.worker.once('online', () => {
        clearTimeout(timer);
        resolve();
      });
      void slot.stopped.then((error) => {
        clearTimeout(timer);
        reject(new Error(`wasm-simd-threads: could not start worker ${index}: ${error.message}`));
      });
    });
  }

  /** Marks the slot's command as finished (so a replacement worker does not run it) and returns `error`. */
  private abandon(index: number, error: Error): Error {
    const ctl = this.control(index);
    Atomics.store(ctl, DONE, Atomics.load(ctl, SEQ));
    const slot = this.slots[index];
    if (slot) slot.dead ??= error;
    return error;
  }
}
