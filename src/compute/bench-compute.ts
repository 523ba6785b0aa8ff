// `noisescope bench compute`: Gram and Σx² throughput per backend beside this machine's memory
// bandwidth, measured in the same run. Bandwidth is the best of (a) the hand-written wasm SIMD
// streaming read (f32x4 adds over data already in wasm memory) and (b) a typed-array copy
// (Float32Array.set, counted as bytes read). GB/s = bytes of gradient read / best of the timed calls.
import { BACKEND_NAMES, createBackend } from './backends.js';
import { fillUniform } from './probe-data.js';
import { formatSelection, selectBackend } from './select-backend.js';
import { WasmArena } from './wasm-arena.js';
import { createWasmSimdThreadsBackend } from './wasm-simd-threads-backend.js';
import { instantiateSimd, type SimdExports } from './wasm-simd-module.js';

const BANDWIDTH_FLOATS = 64 << 20; // 256 MiB
const GRAM_SHAPES = [2, 4, 8, 16].map((gradients) => ({ gradients, length: (8 << 20) / gradients })); // 32 MiB per block
const SQUARES_FLOATS = 8 << 20; // 32 MiB
const REPEATS = 3;

/** Best of `repeats` timed calls after an untimed one, more (up to 3×) while they took under 0.3 s
 *  in all: the fast backends' calls are short enough to be hit by other processes on a shared machine.
 *  `before` runs untimed ahead of each call. */
async function bestSeconds(repeats: number, run: () => unknown, before: () => unknown = () => {}): Promise<number> {
  await before();
  await run(); // compile, JIT, first-touch
  let best = Infinity, timed = 0;
  for (let r = 0; r < repeats || (r < 3 * repeats && timed < 0.3); r++) {
    await before();
    const start = performance.now();
    await run();
    const seconds = (performance.now() - start) / 1000;
    best = Math.min(best, seconds);
    timed += seconds;
  }
  return best;
}
const gbps = (bytes: number, seconds: number): number => bytes / seconds / 1e9;

interface Bandwidth {
  readonly wasmRead: number;
  readonly copy: number;
  /** Reads the 256 MiB buffer: a block read after it comes from memory, not from the CPU's last-level cache. */
  readonly evict: () => void;
  /** float64 products per second of the 4×2 Gram kernel on rows already in cache (null without SIMD). */
  readonly kernelProducts: number | null;
  /** The same streaming read on all of wasm-simd-threads' threads (null with one thread). */
  readonly threaded: { readonly threads: number; readonly gbps: number } | null;
}

async function memoryBandwidth(): Promise<Bandwidth> {
  const arena = new WasmArena();
  const simd = instantiateSimd(arena.memory);
  const bytes = BANDWIDTH_FLOATS * 4;
  const at = arena.allocate(bytes);
  fillUniform(arena.floats(at, BANDWIDTH_FLOATS), 1);
  const wasmRead = 'unsupported' in simd ? 0 : gbps(bytes, await bestSeconds(REPEATS, () => simd.readsum(at, BANDWIDTH_FLOATS)));
  const source = arena.floats(at, BANDWIDTH_FLOATS).slice();
  const target = new Float32Array(BANDWIDTH_FLOATS);
  const copy = gbps(bytes, await bestSeconds(REPEATS, () => target.set(source)));
  const evict = 'unsupported' in simd ? () => void target.set(source) : () => void simd.readsum(at, BANDWIDTH_FLOATS);
  return { wasmRead, copy, evict, kernelProducts: 'unsupported' in simd ? null : await kernelProducts(arena, simd), threaded: await threadedRead() };
}

/** A multi-threaded backend reads with every core: its fair bandwidth is the read on as many threads. */
async function threadedRead(): Promise<Bandwidth['threaded']> {
  const backend = await createWasmSimdThreadsBackend().catch(() => null);
  if (backend === null) return null;
  if (backend.threads === 1) {
    backend.dispose();
    return null;
  }
  const block = backend.allocateBlock(1, BANDWIDTH_FLOATS);
  fillUniform(block.values, 1);
  const seconds = await bestSeconds(REPEATS, () => backend.streamingRead(block.values));
  block.release();
  backend.dispose();
  return { threads: backend.threads, gbps: gbps(BANDWIDTH_FLOATS * 4, seconds) };
}

/** The Gram's arithmetic ceiling: the 4×2 kernel alone on six cached float64 rows. */
async function kernelProducts(arena: WasmArena, simd: SimdExports): Promise<number> {
  const n = 4096, calls = 200, rows = arena.allocate(6 * n * 8), out = arena.allocate(64);
  arena.doubles(rows, 6 * n).set(fillUniform(new Float32Array(6 * n), 9));
  const stride = n * 8, b = rows + 4 * stride;
  const seconds = await bestSeconds(5, () => {
    for (let c = 0; c < calls; c++) simd.gram4x2(rows, stride, b, n, out, rows, b);
  });
  return (8 * n * calls) / seconds;
}

export async function runComputeBench(): Promise<string> {
  const lines: string[] = [];
  const bandwidth = await memoryBandwidth();
  const memory = Math.max(bandwidth.wasmRead, bandwidth.copy);
  const threaded = bandwidth.threaded;
  lines.push(`memory bandwidth: ${memory.toFixed(1)} GB/s (wasm SIMD streaming read ${bandwidth.wasmRead.toFixed(1)}, Float32Array copy ${bandwidth.copy.toFixed(1)} GB/s read, 256 MiB)${threaded ? `; the streaming read on ${threaded.threads} threads ${threaded.gbps.toFixed(1)} GB/s` : ''}`);
  const { backend: chosen, report } = await selectBackend();
  chosen.dispose();
  lines.push(formatSelection(report));
  const header = ['backend', 'runs', ...GRAM_SHAPES.map((s) => `Gram K=${s.gradients}`), 'Σx²'];
  lines.push(`throughput, GB/s of gradient read (best of ${REPEATS}–${3 * REPEATS}; blocks of 32 MiB read from memory, the last-level cache flushed before each call; Gram K×length = ${GRAM_SHAPES.map((s) => `${s.gradients}×${s.length}`).join(', ')}):`);
  lines.push(`  ${header[0]!.padEnd(17)}${header.slice(2).map((h) => h.padStart(10)).join('')}  ${header[1]}`);
  let chosenFigures: number[] = [];
  for (const name of BACKEND_NAMES) {
    const backend = await createBackend(name).catch((error: unknown) => error as Error);
    if (backend instanceof Error) {
      lines.push(`  ${name.padEnd(17)}  unavailable: ${backend.message}`);
      continue;
    }
    const figures: number[] = [];
    for (const shape of GRAM_SHAPES) {
      const block = backend.allocateBlock(shape.gradients, shape.length);
      fillUniform(block.values, 5);
      const gram = new Float64Array(shape.gradients ** 2);
      figures.push(gbps(shape.gradients * shape.length * 4, await bestSeconds(REPEATS, () => backend.addGram(block, gram), bandwidth.evict)));
      block.release();
    }
    const squares = backend.allocateBlock(1, SQUARES_FLOATS);
    fillUniform(squares.values, 6);
    figures.push(gbps(SQUARES_FLOATS * 4, await bestSeconds(REPEATS, () => backend.sumOfSquares(squares.values), bandwidth.evict)));
    squares.release();
    if (name === report.chosen) chosenFigures = figures;
    lines.push(`  ${name.padEnd(17)}${figures.map((f) => f.toFixed(2).padStart(10)).join('')}  ${backend.mode}${name === report.chosen ? '  ← chosen' : ''}`);
    backend.dispose();
  }
  const ratios = (bandwidthGBps: number) => {
    const ratio = (f: number | undefined) => (f ? (bandwidthGBps / f).toFixed(1) : '?');
    return `Σx² ${ratio(chosenFigures.at(-1))}×, ${GRAM_SHAPES.map((s, i) => `Gram K=${s.gradients} ${ratio(chosenFigures[i])}×`).join(', ')} below`;
  };
  const onThreads = threaded && report.chosen === 'wasm-simd-threads' ? `; below the ${threaded.threads}-thread read (${threaded.gbps.toFixed(1)} GB/s): ${ratios(threaded.gbps)}` : '';
  lines.push(`target: chosen backend within 2× of memory bandwidth — ${report.chosen}: ${ratios(memory)}${onThreads}`);
  const products = bandwidth.kernelProducts;
  if (products !== null) {
    // A K-row block needs (K + 1)/2 products per element read (K(K+1)/2 pairs over K rows): past a few rows the Gram is bound by arithmetic, not memory.
    const bound = (k: number): string => Math.min(memory, (4 * products) / ((k + 1) / 2) / 1e9).toFixed(1);
    lines.push(`Gram arithmetic ceiling: the 4×2 kernel alone does ${(products / 1e9).toFixed(2)} G float64 products/s on cached rows; a K-row block needs (K+1)/2 per float read, so at most ${GRAM_SHAPES.map((s) => `K=${s.gradients} ${bound(s.gradients)}`).join(', ')} GB/s (capped at the bandwidth) on one core${threaded ? `, ${threaded.threads}× that on ${threaded.threads} threads` : ''}`);
  }
  return lines.join('\n');
}
