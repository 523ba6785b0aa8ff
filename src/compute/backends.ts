// Every backend by name, in the order selection measures them (`--backend NAME` picks one).
import { createGpujsBackend } from './gpujs-backend.js';
import { createJsUnrolledBackend } from './js-unrolled-backend.js';
import type { ReductionBackend } from './reduction-backend.js';
import { createReferenceBackend } from './reference-backend.js';
import { createWasmSimdBackend } from './wasm-simd-backend.js';
import { createWasmSimdThreadsBackend } from './wasm-simd-threads-backend.js';

export const BACKEND_NAMES = [
  'wasm-simd',
  'wasm-simd-threads', // the same kernels on every core (at most 4): a worker per core over shared memory
  'js-unrolled',
  'gpujs-webgpu',
  'gpujs-headlessgl',
  'gpujs-webasm',
  'gpujs-gpu', // gpu.js's own choice: headlessgl → webgl2 → webgl → webasm → cpu
  'gpujs-async', // the same under the Promise contract: webgpu when an adapter answers, threaded webasm
  'gpujs-cpu',
  'reference',
] as const;
export type BackendName = (typeof BACKEND_NAMES)[number];

export function isBackendName(name: string): name is BackendName {
  return (BACKEND_NAMES as readonly string[]).includes(name);
}

/** The name, checked: an unknown one is a RangeError that lists the choices. */
export function parseBackendName(name: string): BackendName {
  if (isBackendName(name)) return name;
  throw new RangeError(`unknown compute backend '${name}': choose one of ${BACKEND_NAMES.join(', ')}`);
}

/** Creates a backend; rejects when this machine cannot run it (the message says why). */
export async function createBackend(name: BackendName): Promise<ReductionBackend> {
  switch (name) {
    case 'wasm-simd':
      return createWasmSimdBackend();
    case 'wasm-simd-threads':
      return createWasmSimdThreadsBackend();
    case 'js-unrolled':
      return createJsUnrolledBackend();
    case 'reference':
      return createReferenceBackend();
    default:
      return createGpujsBackend(name.slice('gpujs-'.length) as Parameters<typeof createGpujsBackend>[0]);
  }
}
