// Sketch mode's declaration (Hello.sketch): m buckets per layer and one wire dtype, fixed for the run.
import { NoiseScopeError } from '../errors.js';
import { WIRE_DTYPE_BYTES, type WireDtype } from '../transport/aligned-copy.js';
import type { SketchSpec__Output } from '../transport/generated/noisescope/v1/SketchSpec.js';
import type { LayerInfo, SketchSpec } from '../types.js';

/** One layer's sketch travels in one message (the hook's 1 MiB of fp32). */
export const MAX_SKETCH_SIZE = 1 << 18;

/** Validates a MODE_SKETCH Hello's SketchSpec against its layers; throws an invalid-message error naming what is wrong. */
export function sketchSpecFromHello(wire: SketchSpec__Output | null | undefined, layers: readonly LayerInfo[]): SketchSpec {
  const invalid = (why: string) => new NoiseScopeError('invalid-message', `Hello: mode MODE_SKETCH ${why}`);
  if (!wire) throw invalid('needs sketch (a SketchSpec: m per layer and the dtype)');
  if (wire.sizes.length !== layers.length) throw invalid(`declares ${wire.sizes.length} sketch sizes for ${layers.length} layers`);
  wire.sizes.forEach((m, i) => {
    const layer = layers[i] as LayerInfo;
    if (!(m >= 1 && m <= layer.numel && m <= MAX_SKETCH_SIZE)) {
      throw invalid(`sketch size ${m} of layer ${i} '${layer.name}' is outside 1..min(numel ${layer.numel}, ${MAX_SKETCH_SIZE})`);
    }
  });
  if (WIRE_DTYPE_BYTES[wire.dtype as WireDtype] === undefined) throw invalid(`sketch dtype ${String(wire.dtype)} is not DTYPE_F32, DTYPE_F16 or DTYPE_BF16`);
  return { sizes: [...wire.sizes], dtype: wire.dtype as WireDtype };
}

/** A later rank of a sketch run must declare the same sketches; returns why not, or null. */
export function sketchMismatch(run: SketchSpec | undefined, next: SketchSpec | undefined): string | null {
  if (!run || !next) return run === next ? null : `mode ${run ? 'sketch' : 'not sketch'}; this rank declared ${next ? 'sketch' : 'another mode'}`;
  if (run.dtype !== next.dtype) return `sketch dtype ${run.dtype}; this rank declared ${next.dtype}`;
  const i = run.sizes.findIndex((m, l) => next.sizes[l] !== m);
  return i < 0 ? null : `sketch size ${run.sizes[i]} for layer ${i}; this rank declared ${next.sizes[i]}`;
}
