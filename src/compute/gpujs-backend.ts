// gpu.js backend, one per gpu.js mode. Pitfalls it is built around (DESIGN, Measured facts, and
// re-measured for this kernel): an index computed in the kernel above 2^24 reads the wrong element,
// and a float32 running sum stalls at 2^24. So the K × length block is copied into a zero-padded
// 3-D input [K][spans][SPAN] (every index small), each thread sums one span of SPAN products in
// float32, and the host adds the spans in float64. Also: gpu.js's cpu mode computed wrong sums
// with dynamicArguments, so each (K, spans) shape gets its own compiled kernel, cached.
import { GPU, Input } from 'gpu.js';
import { addPairSums, checkGramShapes, heapBlock, type GradientBlock, type OwnedBlock, type ReductionBackend } from './reduction-backend.js';

/** Products summed in float32 per thread: worst-case relative error ≈ SPAN · 2^-24 ≈ 1.5e-5. */
export const SPAN = 256;
const CACHED_SHAPES = 8;

/** gpu.js modes we can ask for in Node ('webgl' and 'webgl2' need a browser). */
export const GPUJS_MODES = ['webgpu', 'headlessgl', 'gpu', 'webasm', 'async', 'cpu'] as const;
export type GpujsMode = (typeof GPUJS_MODES)[number];

type KernelResult = Float32Array | Float32Array[];
interface Kernel {
  (...args: unknown[]): KernelResult | Promise<KernelResult>;
  readonly kernel: { readonly constructor: { readonly name: string; readonly mode?: string }; readonly fallbackReason?: string | null };
  destroy(): void;
}
interface Gpu {
  createKernel(fn: (...args: never[]) => number, settings: object): Kernel;
  destroy(): Promise<void> | void;
}

interface Shape {
  readonly kernel: Kernel;
  readonly staging: Float32Array;
  readonly extra: readonly Float32Array[];
}

// Kernel bodies are transpiled by gpu.js from their source; `this` is its thread context.
interface Thread {
  readonly thread: { readonly x: number; readonly y: number };
  readonly constants: { readonly span: number };
}
function gramSpans(this: Thread, a: number[][][], pi: number[], pj: number[]): number {
  const i = pi[this.thread.y] as number;
  const j = pj[this.thread.y] as number;
  const p = this.thread.x;
  let sum = 0;
  for (let t = 0; t < this.constants.span; t++) sum += (a[i]![p]![t] as number) * (a[j]![p]![t] as number);
  return sum;
}
function squareSpans(this: Thread, a: number[][]): number {
  const p = this.thread.x;
  let sum = 0;
  for (let t = 0; t < this.constants.span; t++) sum += (a[p]![t] as number) * (a[p]![t] as number);
  return sum;
}

export async function createGpujsBackend(mode: GpujsMode): Promise<ReductionBackend> {
  const gpu = new GPU({ mode }) as unknown as Gpu; // throws "not supported" where the mode is missing
  const shapes = new Map<string, Shape>();
  let used = `gpu.js ${mode} mode`;

  const shape = (key: string, build: () => Shape): Shape => {
    let found = shapes.get(key);
    if (found) {
      shapes.delete(key); // re-insert: the Map's order is least recently used first
    } else {
      found = build();
      if (shapes.size >= CACHED_SHAPES) {
        const [oldKey, old] = shapes.entries().next().value as [string, Shape];
        old.kernel.destroy();
        shapes.delete(oldKey);
      }
    }
    shapes.set(key, found);
    return found;
  };
  const run = async (s: Shape, args: unknown[]): Promise<KernelResult> => {
    const result = await s.kernel(...args);
    const ran = s.kernel.kernel;
    used = `gpu.js ${mode} mode → ${ran.constructor.mode ?? '?'} (${ran.constructor.name})${ran.fallbackReason ? `, fell back: ${ran.fallbackReason}` : ''}`;
    return result;
  };

  const backend: ReductionBackend = {
    name: `gpujs-${mode}`,
    get mode() {
      return used;
    },
    allocateBlock: (gradients: number, length: number): OwnedBlock => heapBlock(gradients, length),
    async addGram(block: GradientBlock, gram: Float64Array): Promise<void> {
      checkGramShapes(block, gram);
      const { gradients: k, length: n, values } = block;
      if (n === 0) return;
      const spans = Math.ceil(n / SPAN);
      const s = shape(`gram ${k}x${spans}`, () => {
        const pi: number[] = [], pj: number[] = [];
        for (let i = 0; i < k; i++) for (let j = i; j < k; j++) pi.push(i), pj.push(j);
        const kernel = gpu.createKernel(gramSpans, { constants: { span: SPAN }, loopMaxIterations: SPAN, output: [spans, pi.length] });
        return { kernel, staging: new Float32Array(k * spans * SPAN), extra: [Float32Array.from(pi), Float32Array.from(pj)] };
      });
      for (let i = 0; i < k; i++) {
        s.staging.set(values.subarray(i * n, (i + 1) * n), i * spans * SPAN);
        s.staging.fill(0, i * spans * SPAN + n, (i + 1) * spans * SPAN);
      }
      const out = (await run(s, [new Input(s.staging as unknown as number[], [SPAN, spans, k]), ...s.extra])) as Float32Array[];
      const pairs = new Float64Array(out.length);
      out.forEach((row, q) => (pairs[q] = sumFloat64(row)));
      addPairSums(pairs, k, gram);
    },
    async sumOfSquares(values: Float32Array): Promise<number> {
      if (values.length === 0) return 0;
      const spans = Math.ceil(values.length / SPAN);
      const s = shape(`sumsq ${spans}`, () => ({
        kernel: gpu.createKernel(squareSpans, { constants: { span: SPAN }, loopMaxIterations: SPAN, output: [spans] }),
        staging: new Float32Array(spans * SPAN),
        extra: [],
      }));
      s.staging.set(values);
      s.staging.fill(0, values.length);
      return sumFloat64((await run(s, [new Input(s.staging as unknown as number[], [SPAN, spans])])) as Float32Array);
    },
    dispose() {
      for (const s of shapes.values()) s.kernel.destroy();
      shapes.clear();
      void Promise.resolve(gpu.destroy()).catch(() => {});
    },
  };
  // One tiny call now, so an unusable mode fails here and `mode` names what runs from the start.
  await backend.sumOfSquares(new Float32Array([1, 2]));
  return backend;
}

function sumFloat64(values: Float32Array): number {
  let sum = 0;
  for (const v of values) sum += v;
  return sum;
}
