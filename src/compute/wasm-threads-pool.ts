// Worker threads that run the wasm-simd module over one shared WebAssembly.Memory. Each worker
// instantiates the same compiled module (posted to it, not recompiled) and sleeps in Atomics.wait
// on its control block, a few words in the shared memory; the calling thread writes a command,
// bumps the sequence number and notifies, and learns the worker is done from its done word
// (Atomics.waitAsync, or read directly when the next command is posted). No message per call, and
// no worker .js file: the worker is an `eval` string built from self-contained functions' source,
// so it runs the same under vitest (TypeScript sources) and from dist/.
// A call never waits for a worker (the caller finishes any chunk a worker has not), so a worker that
// fails is recorded in `failures`, and one that dies or hangs is replaced in the background.
import { Worker } from 'node:worker_threads';
import type { WasmMemory } from './wasm-api.js';
import { gramPairs } from './wasm-simd-backend.js';
import type { SimdExports } from './wasm-simd-module.js';
import { chunkStart, claimChunks, gramChunkWork, resultsOffset, squareChunkWork } from './wasm-threads-chunks.js';

/** Bytes of one worker's control block (allocate them 8-aligned in the shared memory). */
export const CONTROL_BYTES = 512;
const SEQ = 0, DONE = 1, STATUS = 2, COMMAND = 3, STALL = 4, STALLED = 5, ARGS = 6, MESSAGE_LENGTH = 31; // Int32 indices
const MESSAGE_BYTE = 128; // an error message (UTF-8)
const START_TIMEOUT_MS = 10_000;
const FAILURES_KEPT = 16;

export const Command = { noop: 0, gram: 1, sumsq: 2 } as const;

/** A command posted to a worker. */
export interface Job {
  /** Settles when the worker is done; rejects, naming the worker and the cause, when the command
   *  throws, the worker dies (replaced in the background) or it overruns the timeout (stopped). */
  readonly settled: Promise<void>;
  /** True once the worker can no longer write anything for this command (done or stopped). */
  finished(): boolean;
}

type Layout = Record<'SEQ' | 'DONE' | 'STATUS' | 'COMMAND' | 'STALL' | 'STALLED' | 'ARGS' | 'MESSAGE_LENGTH' | 'MESSAGE_BYTE' | 'CONTROL_BYTES', number>;
type Sources = Record<'gramPairs' | 'chunkStart' | 'claimChunks' | 'gramChunkWork' | 'squareChunkWork' | 'resultsOffset', string>;

// Runs in the worker: `sources` are the self-contained functions it calls. Arguments are unsigned
// 32-bit (addresses reach 4 GiB).
function workerMain(sources: Sources, layout: Layout): void {
  const { workerData } = require('node:worker_threads') as { workerData: { module: object; memory: WasmMemory; control: number } };
  const { module, memory, control } = workerData;
  const wasmApi = (globalThis as unknown as { WebAssembly: { Instance: new (m: object, i: object) => { exports: object } } }).WebAssembly;
  const simd = new wasmApi.Instance(module, { e: { m: memory } }).exports as SimdExports;
  const compile = <F>(source: string): F => new Function(`return (${source});`)() as F;
  const pairsOf = compile<typeof gramPairs>(sources.gramPairs), start = compile<typeof chunkStart>(sources.chunkStart);
  const claim = compile<typeof claimChunks>(sources.claimChunks), offsetOfResults = compile<typeof resultsOffset>(sources.resultsOffset);
  const gramWork = compile<typeof gramChunkWork>(sources.gramChunkWork), squareWork = compile<typeof squareChunkWork>(sources.squareChunkWork);
  const ctl = new Int32Array(memory.buffer, control, layout.MESSAGE_BYTE / 4); // never moves: growing keeps old views valid
  const views = {
    floats: (offset: number, count: number) => new Float32Array(memory.buffer, offset, count),
    doubles: (offset: number, count: number) => new Float64Array(memory.buffer, offset, count),
  };
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  const arg = (i: number): number => (ctl[layout.ARGS + i] as number) >>> 0;
  // Chunk arguments: area address, chunks, this thread, threads, then the command's own from index 4.
  const area = (count: number) => {
    const at = arg(0), chunks = arg(1);
    return { words: new Int32Array(memory.buffer, at, 1 + chunks), chunks, threads: arg(3), count, results: at + offsetOfResults(chunks) };
  };
  const run = (command: number, pause: () => void): void => {
    if (command === 0) return;
    if (command === 1) {
      const k = arg(4), n = arg(5), tile = arg(7);
      const block = { gradients: k, length: n, values: views.floats(arg(6), k * n) };
      const areas = { narrow: arg(8), wide: arg(9), out: arg(10) };
      const chunks = area((k * (k + 1)) / 2);
      claim(chunks, arg(2), views, gramWork(pairsOf, start, simd, views, areas, block, tile, chunks.chunks), pause, false);
      return;
    }
    if (command === 2) {
      const chunks = area(1);
      claim(chunks, arg(2), views, squareWork(simd, arg(4), arg(5), chunks.chunks, arg(6)), pause, false);
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
    let stall = Atomics.exchange(ctl, layout.STALL, 0);
    const pause = (): void => {
      if (stall <= 0) return;
      Atomics.store(ctl, layout.STALLED, 1);
      Atomics.wait(sleeper, 0, 0, stall);
      stall = 0;
      Atomics.store(ctl, layout.STALLED, 2);
    };
    let status = 0;
    try {
      run(Atomics.load(ctl, layout.COMMAND), pause);
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

const SOURCES: Sources = { gramPairs: gramPairs.toString(), chunkStart: chunkStart.toString(), claimChunks: claimChunks.toString(), gramChunkWork: gramChunkWork.toString(), squareChunkWork: squareChunkWork.toString(), resultsOffset: resultsOffset.toString() };
const LAYOUT: Layout = { SEQ, DONE, STATUS, COMMAND, STALL, STALLED, ARGS, MESSAGE_LENGTH, MESSAGE_BYTE, CONTROL_BYTES };
const WORKER_SOURCE = `(${workerMain.toString()})(${JSON.stringify(SOURCES)}, ${JSON.stringify(LAYOUT)});`;

type WaitAsync = (array: Int32Array, index: number, value: number, timeout?: number) => { async: false; value: string } | { async: true; value: Promise<string> };
const waitAsync = (Atomics as unknown as { waitAsync?: WaitAsync }).waitAsync;

interface Pending {
  readonly seq: number;
  readonly resolve: () => void;
  readonly reject: (error: Error) => void;
  readonly timer: NodeJS.Timeout;
}

interface Slot {
  worker: Worker;
  /** Settles with why the worker stopped, once it has exited. */
  stopped: Promise<Error>;
  /** Resolves once the worker runs; rejects when it cannot start. */
  ready: Promise<void>;
  online: boolean;
  exited: boolean;
  dead: Error | undefined;
  seq: number;
  pending: Pending | undefined;
}

export class WasmThreadPool {
  private readonly slots: Slot[] = [];
  private disposed = false;
  /** The latest worker failures (at most 16): a call still completes without the worker. */
  readonly failures: Error[] = [];

  /** Starts one worker per control block and waits until each runs; rejects when one cannot start. */
  static async start(module: object, memory: WasmMemory, controls: readonly number[], timeoutMs: number): Promise<WasmThreadPool> {
    if (waitAsync === undefined) throw new Error('this runtime has no Atomics.waitAsync (Node ≥ 16 has it)');
    const pool = new WasmThreadPool(module, memory, controls, timeoutMs);
    try {
      await Promise.all(pool.slots.map((slot) => slot.ready));
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

  /** Whether worker `index` would take a command now (running, and done with the last one). */
  idle(index: number): boolean {
    const slot = this.slots[index];
    return !this.disposed && slot !== undefined && slot.online && slot.dead === undefined && this.settle(index, slot);
  }

  /** Posts `command` with unsigned 32-bit `args` to worker `index` if it is idle; undefined if not. */
  post(index: number, command: number, args: readonly number[]): Job | undefined {
    const slot = this.slots[index];
    if (slot === undefined || !this.idle(index)) return undefined;
    const ctl = this.control(index);
    for (const [i, value] of args.entries()) ctl[ARGS + i] = value | 0;
    Atomics.store(ctl, COMMAND, command);
    const previous = slot.seq; // = DONE: the worker has finished everything before
    const seq = (slot.seq = (previous + 1) | 0);
    let settle: Pick<Pending, 'resolve' | 'reject'> = { resolve: () => {}, reject: () => {} };
    const settled = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
    // A ref'd timer: it bounds the wait, and keeps the process alive while only waitAsync is pending.
    const timer = setTimeout(() => void this.overrun(index, slot, seq), this.timeoutMs);
    slot.pending = { seq, timer, ...settle };
    Atomics.store(ctl, SEQ, seq);
    Atomics.notify(ctl, SEQ);
    const waited = (waitAsync as WaitAsync)(ctl, DONE, previous, this.timeoutMs); // its own timeout too: no wait left pending forever after a death
    if (waited.async) void waited.value.then(() => this.settle(index, slot));
    else this.settle(index, slot);
    return { settled, finished: () => slot.exited || slot.seq !== seq || Atomics.load(ctl, DONE) === seq };
  }

  /** Runs `command` on worker `index` and waits for it, restarting the worker first if it died. */
  async run(index: number, command: number, args: readonly number[]): Promise<void> {
    if (this.disposed) throw new Error('wasm-simd-threads: the backend was disposed');
    let slot = this.slots[index];
    if (slot === undefined) throw new RangeError(`no worker ${index}: the pool has ${this.slots.length}`);
    if (slot.dead && slot.exited) this.replace(index);
    slot = this.slots[index] as Slot;
    await slot.ready; // the call's timeout should not count the start-up
    const job = this.post(index, command, args);
    if (job === undefined) throw new Error(`wasm-simd-threads: worker ${index} is busy`);
    return job.settled;
  }

  /** Test hook: worker `index` sleeps `ms` before computing the first chunk it claims in its next command. */
  stall(index: number, ms: number): void {
    Atomics.store(this.control(index), STALLED, 0);
    Atomics.store(this.control(index), STALL, ms);
  }

  /** Test hook: 0 until a stall starts, 1 while worker `index` sleeps in it, 2 after. */
  stalled(index: number): number {
    return Atomics.load(this.control(index), STALLED);
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

  /** Settles the slot's pending command if the worker is done with it; true when nothing is pending. */
  private settle(index: number, slot: Slot): boolean {
    const pending = slot.pending;
    if (pending === undefined) return true;
    const ctl = this.control(index);
    if (Atomics.load(ctl, DONE) !== pending.seq) return false;
    slot.pending = undefined;
    clearTimeout(pending.timer);
    if (Atomics.load(ctl, STATUS) === 0) {
      pending.resolve();
    } else {
      const length = Atomics.load(ctl, MESSAGE_LENGTH);
      const text = new TextDecoder().decode(new Uint8Array(this.memory.buffer, (this.controls[index] as number) + MESSAGE_BYTE, length).slice());
      pending.reject(this.failed(new Error(`wasm-simd-threads: worker ${index} failed: ${text}`)));
    }
    return true;
  }

  /** The worker took longer than the timeout: stopped (it must not write into memory a later call
   *  uses), its command rejected, a replacement started. */
  private async overrun(index: number, slot: Slot, seq: number): Promise<void> {
    if (slot.pending?.seq !== seq || this.settle(index, slot)) return;
    slot.dead ??= new Error(`wasm-simd-threads: worker ${index} did not finish within ${this.timeoutMs} ms; it was stopped`);
    await slot.worker.terminate();
    slot.exited = true;
  }

  private failed(error: Error): Error {
    this.failures.push(error);
    if (this.failures.length > FAILURES_KEPT) this.failures.shift();
    return error;
  }

  /** A fresh worker in slot `index`, starting in the background (unless the pool was disposed). */
  private replace(index: number): void {
    if (this.disposed) return;
    const slot = this.spawn(index);
    this.slots[index] = slot;
    slot.ready.catch(() => {}); // recorded in failures; run() awaits it and reports it
  }

  private spawn(index: number): Slot {
    const ctl = this.control(index);
    Atomics.store(ctl, DONE, Atomics.load(ctl, SEQ)); // nothing pending for the new worker,
    Atomics.notify(ctl, DONE); // and no waitAsync left pending on the old one
    Atomics.store(ctl, STALL, 0);
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { module: this.module, memory: this.memory, control: this.controls[index] } });
    worker.unref();
    let reason: Error | undefined;
    worker.once('error', (error) => (reason = new Error(`wasm-simd-threads: worker ${index} threw: ${error.message}`)));
    const stopped = new Promise<Error>((resolve) => worker.once('exit', (code) => resolve(reason ?? new Error(`wasm-simd-threads: worker ${index} exited (code ${code})`))));
    const slot: Slot = { worker, stopped, ready: Promise.resolve(), online: false, exited: false, dead: undefined, seq: Atomics.load(ctl, SEQ), pending: undefined };
    void stopped.then((error) => {
      slot.exited = true;
      slot.dead ??= error;
      if (this.disposed) return;
      const pending = slot.pending;
      slot.pending = undefined;
      if (pending) {
        clearTimeout(pending.timer);
        pending.reject(this.failed(slot.dead));
      } else {
        this.failed(slot.dead);
      }
      if (this.slots[index] === slot) this.replace(index);
    });
    slot.ready = new Promise((resolve, reject) => {
      // Ref'd: the workers are unref()'d, so without it a process waiting only for them would exit.
      const timer = setTimeout(() => {
        slot.dead ??= new Error(`wasm-simd-threads: worker ${index} did not start within ${START_TIMEOUT_MS} ms`);
        reject(slot.dead);
        void worker.terminate(); // its exit records the failure and starts another
      }, START_TIMEOUT_MS);
      worker.once('online', () => {
        clearTimeout(timer);
        slot.online = true;
        resolve();
      });
      void stopped.then((error) => {
        clearTimeout(timer);
        reject(new Error(`wasm-simd-threads: could not start worker ${index}: ${error.message}`));
      });
    });
    return slot;
  }
}
