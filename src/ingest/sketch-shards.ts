// Sketch shards into the dense path: a layer's CountSketch (m values) is reduced exactly as a dense layer of
// m elements would be, so the step's Gram matrices — norms, cross inner products, B_simple, diversity — are
// those of the sketches (unbiased for the gradients'). Here each sketch is checked against the run's
// SketchSpec and its step's seed, then split into one offset-0 "dense chunk" per layer for the assembler.
import { NoiseScopeError } from '../errors.js';
import { WIRE_DTYPE_BYTES } from '../transport/aligned-copy.js';
import type { GradientShard__Output } from '../transport/generated/noisescope/v1/GradientShard.js';
import type { Sketch__Output } from '../transport/generated/noisescope/v1/Sketch.js';
import type { StepEnd__Output } from '../transport/generated/noisescope/v1/StepEnd.js';
import type { SketchSpec } from '../types.js';
import type { RunLayout } from './run-layout.js';

/** Steps whose seed (and ranks' refused steps) are remembered; older ones are forgotten first. */
const REMEMBERED_STEPS = 256;

/** The assembler's view of a sketch run: each layer is its sketch, a "dense" layer of m elements. */
export function sketchReductionLayout(layout: RunLayout): RunLayout {
  const sketch = layout.sketch;
  if (layout.mode !== 'sketch' || !sketch) return layout;
  return { ...layout, mode: 'dense', layers: layout.layers.map((l, i) => ({ ...l, numel: sketch.sizes[i] as number })) };
}

/** A shard whose payload the run's mode does not take: sketches outside sketch runs, dense chunks in them. */
function wrongMode(layout: RunLayout, shard: GradientShard__Output): NoiseScopeError {
  return new NoiseScopeError(
    'invalid-message',
    `step ${shard.step} micro-batch ${shard.microBatch}: a ${shard.payload} shard, but run '${layout.run}' said mode ${layout.mode} in its Hello (${shard.payload} shards need MODE_${shard.payload === 'sketch' ? 'SKETCH' : 'DENSE'})`,
  );
}

/** Outside sketch runs a sketch is refused alone (the run's steps are not sketched). */
export function refuseSketchOutsideSketchMode(layout: RunLayout, shard: GradientShard__Output): void {
  if (shard.payload === 'sketch') throw wrongMode(layout, shard);
}

export class SketchShards {
  private readonly seeds = new Map<number, number>();
  private readonly refused = new Map<string, NoiseScopeError>();

  constructor(
    private readonly layout: RunLayout,
    private readonly spec: SketchSpec,
  ) {}

  /**
   * The per-layer dense chunks a sketch shard stands for; [] when a sketch of the same step on this rank was
   * refused (the step is excluded at its end, its later sketches dropped quietly). Throws why a sketch is refused.
   */
  toChunks(rank: number, shard: GradientShard__Output): GradientShard__Output[] {
    if (shard.payload !== 'sketch' && shard.payload !== 'dense') return [shard]; // norms shards: the assembler judges them
    if (this.refused.has(`${rank}:${shard.step}`)) return [];
    try {
      if (shard.payload === 'dense') throw wrongMode(this.layout, shard); // the assembler sees sketch-sized layers
      return this.split(shard);
    } catch (error) {
      const refusal = error as NoiseScopeError;
      remember(this.refused, `${rank}:${shard.step}`, refusal);
      throw refusal;
    }
  }

  /** At a rank's step end: the same StepEnd, or one marking the step skipped when a sketch of it was refused. */
  stepEnd(rank: number, end: StepEnd__Output): StepEnd__Output {
    const key = `${rank}:${end.step}`;
    const refusal = this.refused.get(key);
    if (!refusal) return end;
    this.refused.delete(key);
    return { ...end, skipped: true, skipReason: `a sketch was refused (${refusal.message}): the step is excluded` };
  }

  private split(shard: GradientShard__Output): GradientShard__Output[] {
    const sketch = shard.sketch as Sketch__Output;
    const count = Math.max(1, sketch.layers);
    const first = shard.layer;
    const where = `step ${shard.step} micro-batch ${shard.microBatch} sketch of layer${count > 1 ? `s ${first}..${first + count - 1}` : ` ${first}`}`;
    const invalid = (why: string) => new NoiseScopeError('invalid-message', `${where}: ${why}: the step is excluded`);
    const layers = this.layout.layers;
    if (first + count > layers.length) throw new NoiseScopeError('unknown-layer', `${where}: run '${this.layout.run}' declared ${layers.length} layers: the step is excluded`);
    if (sketch.dtype !== this.spec.dtype) throw invalid(`dtype ${sketch.dtype}, but the run declared ${this.spec.dtype} sketches`);
    const sizes = this.spec.sizes.slice(first, first + count);
    const declared = sizes.reduce((a, b) => a + b, 0);
    if (sketch.size !== declared) {
      throw invalid(`size ${sketch.size}, but the run declared ${count > 1 ? `${sizes.join(' + ')} = ${declared} for these layers` : `${declared} for layer '${layers[first]?.name}'`}`);
    }
    const bytes = WIRE_DTYPE_BYTES[this.spec.dtype];
    if (sketch.data.byteLength !== declared * bytes) throw invalid(`${sketch.data.byteLength} bytes of data for ${declared} ${this.spec.dtype} values (${declared * bytes} bytes)`);
    const seed = this.seeds.get(shard.step);
    if (seed === undefined) remember(this.seeds, shard.step, sketch.seed);
    else if (seed !== sketch.seed) throw invalid(`seed ${sketch.seed}, but earlier sketches of this step (every micro-batch and rank share one) had seed ${seed}`);
    const chunks: GradientShard__Output[] = [];
    let offset = 0;
    for (let i = 0; i < count; i++) {
      const length = (sizes[i] as number) * bytes;
      const data = sketch.data.subarray(offset, offset + length);
      offset += length;
      chunks.push({ ...shard, layer: first + i, payload: 'dense', dense: { offset: 0, dtype: sketch.dtype, data }, sketch: null });
    }
    return chunks;
  }
}

function remember<K, V>(map: Map<K, V>, key: K, value: V): void {
  map.set(key, value);
  if (map.size > REMEMBERED_STEPS) map.delete(map.keys().next().value as K);
}
