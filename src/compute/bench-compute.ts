// `noisescope bench compute`: Gram and Σx² throughput per backend beside this machine's memory
// bandwidth, measured in the same run. Bandwidth is the best of (a) the hand-written wasm SIMD
// streaming read (f32x4 adds over data already in wasm memory) and (b) a typed-array copy
// (Float32Array.set, counted as bytes read). GB/s = bytes of gradient read / best of the timed calls.
import { BACKEND_NAMES, createBackend } from './backends.js';
import { fillUniform } from './probe-data.js';
import { formatSelection, selectBackend } from './select-backend.js';
import { WasmArena } from './wasm-arena.js';
import { instantiateSimd } from './wasm-simd-module.js';

const BANDWIDTH_FLOATS = 64 << 20; // 256 MiB
const GRAM_SHAPES = [2, 4, 8, 16].map((gradients) => ({ gradients, length: (8 << 20) / gradients })); // 32 MiB per block
const SQUARES_FLOATS = 8 << 20; // 32 MiB
const REPEATS = 3;

async function bestSeconds(repeats: number, run: () => unknown): Promise<number> {
  await run(); // compile, JIT, first-touch
  let best = Infinity;
  for (let r = 0; r < repeats; r++) {
    const start = performance.now();
    await run();
    best = Math.min(best, (performance.now() - start) / 1000);
  }
  return best;
}
const gbps = (bytes: number, seconds: number): number => bytes / seconds / 1e9;

async function memoryBandwidth(): Promise<{ wasmRead: number; copy: number }> {
  const arena = new WasmArena();
  const simd = instantiateSimd(arena.memory);
  const bytes = BANDWIDTH_FLOATS * 4;
  const at = arena.allocate(bytes);
  fillUniform(arena.floats(at, BANDWIDTH_FLOATS), 1);
  const wasmRead = 'unsupported' in simd ? 0 : gbps(bytes, await bestSeconds(REPEATS, () => simd.readsum(at, BANDWIDTH_FLOATS)));
  const source = arena.floats(at, BANDWIDTH_FLOATS).slice();
  const target = new Float32Array(BANDWIDTH_FLOATS);
  const copy = gbps(bytes, await bestSeconds(REPEATS, () => target.set(source)));
  return { wasmRead, copy };
}

export async function runComputeBench(): Promise<string> {
  const lines: string[] = [];
  const bandwidth = await memoryBandwidth();
  const memory = Math.max(bandwidth.wasmRead, bandwidth.copy);
  lines.push(`memory bandwidth: ${memory.toFixed(1)} GB/s (wasm SIMD streaming read ${bandwidth.wasmRead.toFixed(1)}, Float32Array copy ${bandwidth.copy.toFixed(1)} GB/s read, 256 MiB)`);
  const { backend: chosen, report } = await selectBackend();
  chosen.dispose();
  lines.push(formatSelection(report));
  const header = ['backend', 'runs', ...GRAM_SHAPES.map((s) => `Gram K=${s.gradients}`), 'Σx²'];
  lines.push(`throughput, GB/s of gradient read (best of ${REPEATS}; blocks of 32 MiB, Gram K×length = ${GRAM_SHAPES.map((s) => `${s.gradients}×${s.length}`).join(', ')}):`);
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
      figures.push(gbps(shape.gradients * shape.length * 4, await bestSeconds(REPEATS, () => backend.addGram(block, gram))));
      block.release();
    }
    const squares = backend.allocateBlock(1, SQUARES_FLOATS);
    fillUniform(squares.values, 6);
    figures.push(gbps(SQUARES_FLOATS * 4, await bestSeconds(REPEATS, () => backend.sumOfSquares(squares.values))));
    squares.release();
    if (name === report.chosen) chosenFigures = figures;
    lines.push(`  ${name.padEnd(17)}${figures.map((f) => f.toFixed(2).padStart(10)).join('')}  ${backend.mode}${name === report.chosen ? '  ← chosen' : ''}`);
    backend.dispose();
  }
  const ratio = (f: number | undefined) => (f ? (memory / f).toFixed(1) : '?');
  lines.push(`target: chosen backend within 2× of memory bandwidth — ${report.chosen}: Σx² ${ratio(chosenFigures.at(-1))}×, ${GRAM_SHAPES.map((s, i) => `Gram K=${s.gradients} ${ratio(chosenFigures[i])}×`).join(', ')} below`);
  return lines.join('\n');
}
