// The multi-threaded wasm-simd backend against the reference on blocks large enough to be split
// across threads (≥ SPLIT_PRODUCTS and more than one tile), with 2, 3 and 4 threads so the parts fall
// at different tiles; deterministic results; memory growth while workers hold views of the shared
// memory; a worker that throws, traps, dies or hangs; dispose() stopping every worker.
// Tolerance 1e-10 of √(G_ii G_jj), as for wasm-simd: exact float64 products, only the summation
// order (per part, then the parts in order) differs from the reference.
import type { Worker } from 'node:worker_threads';
import { afterAll, describe, expect, it } from 'vitest';
import { gramError } from '../../src/compute/probe-data.js';
import { tileLength } from '../../src/compute/tiles.js';
import { createWasmSimdThreadsBackend, SPLIT_PRODUCTS, WorkerUse, type WasmSimdThreadsBackend } from '../../src/compute/wasm-simd-threads-backend.js';
import { Command, type WasmThreadPool } from '../../src/compute/wasm-threads-pool.js';
import { expectedFor, randomBlock } from './check-backend.js';

const TOLERANCE = 1e-10;

/** A row length that splits: ≥ SPLIT_PRODUCTS products, ≥ 12 tiles (3 chunks of 4 and a part), ending mid-tile and mid-SIMD-stride. */
function splitLength(k: number): number {
  return Math.max(12 * tileLength(k), Math.ceil(SPLIT_PRODUCTS / ((k * (k + 1)) / 2))) + 7;
}

async function gramOf(backend: WasmSimdThreadsBackend, values: Float32Array, k: number, length: number): Promise<{ gram: Float64Array; squares: number }> {
  const block = backend.allocateBlock(k, length);
  try {
    block.values.set(values);
    const gram = new Float64Array(k * k);
    await backend.addGram(block, gram);
    return { gram, squares: await backend.sumOfSquares(block.values.subarray(3)) }; // an unaligned start
  } finally {
    block.release();
  }
}

const exited = (worker: Worker): Promise<number> => new Promise((resolve) => worker.once('exit', resolve));

const byK = new Map<number, number[]>(); // the first thread count's Gram per K (the data depends on K only)

describe.each([2, 3, 4])('wasm-simd-threads with %i threads', (threads) => {
  const opened = createWasmSimdThreadsBackend({ threads, adaptive: false }); // the workers take part in every split call
  afterAll(async () => (await opened).dispose());

  it.each(Array.from({ length: 17 }, (_, i) => i + 1))('matches the reference for K = %i on a block split across threads', async (k) => {
    const backend = await opened;
    const length = splitLength(k);
    const values = randomBlock(k, length, 97 * k);
    const expected = await expectedFor(values, k, length);
    const { gram, squares } = await gramOf(backend, values, k, length);
    expect(gramError(gram, expected.gram, k), `K=${k} n=${length}`).toBeLessThanOrEqual(TOLERANCE);
    const wantSquares = expected.squares - [0, 1, 2].reduce((s, i) => s + (values[i] as number) ** 2, 0);
    expect(Math.abs(squares - wantSquares) / wantSquares).toBeLessThanOrEqual(TOLERANCE);
    const again = await gramOf(backend, values, k, length);
    expect(Array.from(again.gram)).toEqual(Array.from(gram)); // chunks added in a fixed order: bit for bit,
    const first = byK.get(k) ?? byK.set(k, Array.from(gram)).get(k);
    expect(Array.from(gram)).toEqual(first); // whatever the thread count
  });
});

describe('wasm-simd-threads', () => {
  it('names its threads, and 1 thread means no workers', async () => {
    const one = await createWasmSimdThreadsBackend({ threads: 1 });
    expect(one.pool).toBeUndefined();
    expect(one.mode).toMatch(/^1 thread \(no workers\), WebAssembly SIMD/);
    const values = randomBlock(5, splitLength(5), 5);
    const { gram } = await gramOf(one, values, 5, splitLength(5));
    expect(gramError(gram, (await expectedFor(values, 5, splitLength(5))).gram, 5)).toBeLessThanOrEqual(TOLERANCE);
    one.dispose();
    const three = await createWasmSimdThreadsBackend({ threads: 3 });
    expect(three.mode).toMatch(/^3 threads \(caller \+ 2 workers\) over shared memory/);
    expect(three.pool?.size).toBe(2);
    three.dispose();
    await expect(createWasmSimdThreadsBackend({ threads: 0 })).rejects.toThrow(/threads must be an integer in 1\.\.64, got 0/);
  });

  it('stays correct while memory grows under calls in flight, and reads blocks in the grown memory', async () => {
    const backend = await createWasmSimdThreadsBackend({ threads: 2, adaptive: false });
    try {
      const k = 4, length = splitLength(k);
      const values = randomBlock(k, length, 31);
      const expected = (await expectedFor(values, k, length)).gram;
      const early = backend.allocateBlock(k, length);
      early.values.set(values);
      const grams = [new Float64Array(k * k), new Float64Array(k * k), new Float64Array(k * k)];
      const inFlight = backend.addGram(early, grams[0] as Float64Array);
      const late = backend.allocateBlock(k, 16 << 20); // 256 MiB more: the shared memory grows while the call runs
      late.values.subarray(0, length).set(values.subarray(0, length)); // only the first row matters below
      const lateBlock = backend.allocateBlock(k, length); // beyond the memory the workers first saw
      lateBlock.values.set(values);
      await Promise.all([inFlight, backend.addGram(lateBlock, grams[1] as Float64Array), backend.addGram(early, grams[2] as Float64Array)]);
      for (const gram of grams) expect(gramError(gram, expected, k)).toBeLessThanOrEqual(TOLERANCE);
      [early, late, lateBlock].forEach((b) => b.release());
    } finally {
      backend.dispose();
    }
  });

  it('rejects a call whose worker throws or traps, naming the worker and the cause, and stays usable', async () => {
    const backend = await createWasmSimdThreadsBackend({ threads: 2 });
    const pool = backend.pool as WasmThreadPool;
    try {
      await expect(pool.run(0, 99, [])).rejects.toThrow('wasm-simd-threads: worker 0 failed: RangeError: unknown command 99');
      const claims = backend.allocateBlock(1, 32); // a call area: claim counter and chunk state (zero), then result slots
      claims.values.fill(0);
      // One chunk (area, chunks, thread 1 of 2), Σx² of 64 strides at an address beyond the memory.
      await expect(pool.run(0, Command.sumsq, [claims.values.byteOffset, 1, 1, 2, 0xf0000000, 64, 0])).rejects.toThrow(/worker 0 failed: RuntimeError: memory access out of bounds/);
      claims.release();
      const values = randomBlock(3, splitLength(3), 3);
      const { gram } = await gramOf(backend, values, 3, splitLength(3));
      expect(gramError(gram, (await expectedFor(values, 3, splitLength(3))).gram, 3)).toBeLessThanOrEqual(TOLERANCE);
    } finally {
      backend.dispose();
    }
  });

  it('rejects a call whose worker dies or hangs, never waits forever, and replaces the worker', async () => {
    const backend = await createWasmSimdThreadsBackend({ threads: 2, timeoutMs: 30 });
    const pool = backend.pool as WasmThreadPool;
    try {
      // A long command for worker 0 alone: K = 32 rows of 512 Ki floats (≈ 0.1 s of products on one core).
      const k = 32, length = 1 << 19, tile = tileLength(k);
      const block = backend.allocateBlock(k, length);
      block.values.fill(0.5);
      const scratch = backend.allocateBlock(1, (k + 1) * tile * 2 + k * tile + 32 + (k * (k + 1)) / 2 * 2);
      const base = scratch.values.byteOffset, wide = base, narrow = wide + (k + 1) * tile * 8, out = narrow + k * tile * 4, area = out + 64;
      const long = (): Promise<void> => {
        new Int32Array(scratch.values.buffer, area, 2).fill(0); // one chunk, the whole block, for worker 0 as thread 0 of 1
        return pool.run(0, Command.gram, [area, 1, 0, 1, k, length, block.values.byteOffset, tile, narrow, wide, out]);
      };

      await expect(long()).rejects.toThrow('wasm-simd-threads: worker 0 did not finish within 30 ms; it was stopped');
      await pool.run(0, Command.noop, []); // a fresh worker

      const [worker] = pool.workers as [Worker];
      const dying = long();
      await new Promise((resolve) => setTimeout(resolve, 5));
      await worker.terminate();
      await expect(dying).rejects.toThrow(/wasm-simd-threads: worker 0 exited/);
      await pool.run(0, Command.noop, []);
      expect(pool.workers[0]).not.toBe(worker);
      [block, scratch].forEach((b) => b.release());
    } finally {
      backend.dispose();
    }
  });

  describe('a worker pushed off its core', () => {
    // 16 chunks of 8 tiles (K = 8, 16 MiB): a few ms of work, so the woken worker claims a chunk.
    const k = 8, length = 16 * 8 * tileLength(k);
    const stalledCall = async (backend: WasmSimdThreadsBackend, block: { values: Float32Array }, ms: number): Promise<number[]> => {
      const pool = backend.pool as WasmThreadPool;
      for (let attempt = 0; attempt < 10; attempt++) {
        await expect.poll(() => pool.idle(0)).toBe(true);
        pool.stall(0, ms); // worker 0 sleeps after claiming its first chunk, before computing it
        const gram = new Float64Array(k * k);
        await backend.addGram({ gradients: k, length, values: block.values }, gram);
        if (pool.stalled(0) === 1) return Array.from(gram); // the call finished while the worker slept on its chunk
      }
      throw new Error('worker 0 never claimed a chunk in 10 calls');
    };

    it('does not hold a call up, and its late write leaves later calls bit-identical', async () => {
      const backend = await createWasmSimdThreadsBackend({ threads: 2, adaptive: false });
      const pool = backend.pool as WasmThreadPool;
      try {
        const [first, second] = [backend.allocateBlock(k, length), backend.allocateBlock(k, length)];
        first.values.set(randomBlock(k, length, 81));
        second.values.set(randomBlock(k, length, 82));
        const gramOf = async (block: typeof first): Promise<number[]> => {
          const gram = new Float64Array(k * k);
          await backend.addGram(block, gram);
          return Array.from(gram);
        };
        const [wantFirst, wantSecond] = [await gramOf(first), await gramOf(second)];
        expect(gramError(Float64Array.from(wantSecond), (await expectedFor(second.values.slice(), k, length)).gram, k)).toBeLessThanOrEqual(TOLERANCE);

        expect(await stalledCall(backend, first, 700)).toEqual(wantFirst); // its chunk was computed by the caller
        let calls = 0;
        while (pool.stalled(0) !== 2 || !pool.idle(0) || calls < 5) {
          // Calls while it sleeps, computes its stale chunk and looks for another: none may see its writes.
          expect(await gramOf(calls % 2 === 0 ? second : first)).toEqual(calls % 2 === 0 ? wantSecond : wantFirst);
          calls++;
        }
        expect(pool.failures).toEqual([]);
        [first, second].forEach((b) => b.release());
      } finally {
        backend.dispose();
      }
    });

    it('that dies mid-call is replaced in the background, and calls go on meanwhile', async () => {
      const backend = await createWasmSimdThreadsBackend({ threads: 2, adaptive: false });
      const pool = backend.pool as WasmThreadPool;
      try {
        const block = backend.allocateBlock(k, length);
        block.values.set(randomBlock(k, length, 83));
        const want = new Float64Array(k * k);
        await backend.addGram(block, want);
        expect(await stalledCall(backend, block, 60_000)).toEqual(Array.from(want));
        const [worker] = pool.workers as [Worker];
        await worker.terminate();
        const again = new Float64Array(k * k);
        await backend.addGram(block, again);
        expect(Array.from(again)).toEqual(Array.from(want));
        await expect.poll(() => pool.workers[0] !== worker && pool.idle(0)).toBe(true);
        expect(pool.failures.map((e) => e.message)).toEqual(['wasm-simd-threads: worker 0 exited (code 1)']);
        const last = new Float64Array(k * k);
        await backend.addGram(block, last);
        expect(Array.from(last)).toEqual(Array.from(want));
        block.release();
      } finally {
        backend.dispose();
      }
    });
  });

  it('wakes the workers only for kinds of call whose recent median speed was higher with them, trying the other way one call in 8', () => {
    const use = new WorkerUse();
    const run = (calls: number, speed: { withWorkers: number; alone: number }): number => {
      let woken = 0;
      for (let i = 0; i < calls; i++) {
        const withWorkers = use.use('gram K=8');
        woken += withWorkers ? 1 : 0;
        use.record('gram K=8', withWorkers, withWorkers ? speed.withWorkers : speed.alone);
      }
      return woken;
    };
    expect(run(6, { withWorkers: 10, alone: 12 })).toBe(3); // each way three times first
    expect(run(16, { withWorkers: 10, alone: 12 })).toBe(2); // alone is faster: the workers only on the tries
    expect(use.use('squares')).toBe(true); // kinds are kept apart
    expect(run(1, { withWorkers: 10, alone: 0.1 })).toBe(0); // one preempted call does not flip it,
    expect(run(8, { withWorkers: 1000, alone: 12 })).toBe(1); // nor one lucky try,
    expect(run(16, { withWorkers: 20, alone: 12 })).toBeGreaterThanOrEqual(3); // a core that stays free does,
    expect(run(16, { withWorkers: 20, alone: 12 })).toBe(14); // and then the workers are woken but for the tries
  });

  it('streamingRead (bench compute\'s multi-threaded bandwidth probe) reads every value once', async () => {
    const backend = await createWasmSimdThreadsBackend({ threads: 3 });
    try {
      const block = backend.allocateBlock(1, SPLIT_PRODUCTS * 2);
      block.values.fill(0.25); // float32 lane sums of 0.25s stay exact
      expect(await backend.streamingRead(block.values)).toBe(SPLIT_PRODUCTS / 2);
      await expect(backend.streamingRead(new Float32Array(16))).rejects.toThrow(/allocateBlock view whose length is a multiple of 16/);
      block.release();
    } finally {
      backend.dispose();
    }
  });

  it('dispose() stops every worker', async () => {
    const backend = await createWasmSimdThreadsBackend({ threads: 4 });
    const workers = (backend.pool as WasmThreadPool).workers;
    expect(workers).toHaveLength(3);
    const exits = workers.map(exited);
    backend.dispose();
    expect(await Promise.all(exits)).toHaveLength(3);
    expect(workers.every((w) => w.threadId === -1)).toBe(true);
    const block = backend.allocateBlock(2, SPLIT_PRODUCTS);
    await expect(backend.addGram(block, new Float64Array(4))).rejects.toThrow('wasm-simd-threads: the backend was disposed');
  });
});
