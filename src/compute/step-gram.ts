// Per-step Gram matrices from gradient chunks as they arrive: the plug for dense-shard ingest.
// All K gradients of a step must chunk a layer at the same offsets and lengths (the hook does: it
// cuts each layer the same way for every micro-batch and rank). A range's block is allocated from
// the backend when its first chunk arrives, reduced into the layer's Gram and released when its
// K-th chunk arrives; so the memory held is the ranges still waiting for some gradient.
import type { OwnedBlock, ReductionBackend } from './reduction-backend.js';

export interface GradientChunk {
  /** Which of the step's K gradients (micro-batch × rank), 0 ≤ gradient < K. */
  readonly gradient: number;
  readonly layer: number;
  /** First element of the chunk within the layer's flattened gradient. */
  readonly offset: number;
  readonly values: Float32Array;
}

/** Told of every block's bytes as it is allocated and released (a byte budget watches this). */
export interface BlockAccounting {
  allocated(bytes: number): void;
  released(bytes: number): void;
}

interface PendingRange {
  readonly block: OwnedBlock;
  readonly arrived: boolean[];
  count: number;
}

export class StepGram {
  private readonly grams: Float64Array[];
  private readonly reduced: number[]; // elements per layer whose Gram update is done
  private readonly pending = new Map<string, PendingRange>();
  private readonly completed = new Set<string>(); // ranges every gradient sent (a repeat is refused, not reopened)

  constructor(
    private readonly backend: ReductionBackend,
    readonly gradients: number,
    readonly layerSizes: readonly number[],
    private readonly accounting?: BlockAccounting,
  ) {
    this.grams = layerSizes.map(() => new Float64Array(gradients * gradients));
    this.reduced = layerSizes.map(() => 0);
  }

  /** Copies the chunk into its range's block; the K-th chunk of a range reduces it. Throws a
   *  RangeError for a chunk that does not fit the declared layers or repeats one. */
  async add(chunk: GradientChunk): Promise<void> {
    return this.accept(chunk);
  }

  /** add(), but a bad chunk throws here, synchronously, and `values` may be reused once it returns
   *  (it is copied before anything is awaited); the promise settles when its reduction (if any) is done. */
  accept(chunk: GradientChunk): Promise<void> {
    const { gradient, layer, offset, values } = chunk;
    const size = this.layerSizes[layer];
    if (size === undefined) throw new RangeError(`layer ${layer} is not one of the step's ${this.layerSizes.length} layers`);
    if (!Number.isInteger(gradient) || gradient < 0 || gradient >= this.gradients) throw new RangeError(`gradient ${gradient} is outside 0..${this.gradients - 1}`);
    if (!Number.isInteger(offset) || offset < 0 || offset + values.length > size) throw new RangeError(`chunk [${offset}, ${offset + values.length}) does not fit layer ${layer} of ${size} elements`);
    const key = `${layer}:${offset}`;
    let range = this.pending.get(key);
    if (range === undefined) {
      if (this.completed.has(key)) throw new RangeError(`gradient ${gradient} repeats layer ${layer} offset ${offset}, whose range all ${this.gradients} gradients already sent`);
      range = { block: this.allocate(values.length), arrived: [], count: 0 };
      this.pending.set(key, range);
    }
    if (range.block.length !== values.length) throw new RangeError(`chunk at layer ${layer} offset ${offset} has ${values.length} elements; gradient chunks there have ${range.block.length}`);
    if (range.arrived[gradient]) throw new RangeError(`gradient ${gradient} already sent layer ${layer} offset ${offset}`);
    range.block.values.set(values, gradient * values.length);
    range.arrived[gradient] = true;
    range.count++;
    if (range.count < this.gradients) return Promise.resolve();
    this.pending.delete(key);
    this.completed.add(key);
    const block = range.block;
    return this.backend
      .addGram(block, this.grams[layer] as Float64Array)
      .then(() => {
        this.reduced[layer] = (this.reduced[layer] as number) + values.length;
      })
      .finally(() => block.release());
  }

  /** Bytes a chunk of `length` elements at (layer, offset) would newly take: a block, unless its range is open. */
  bytesToAccept(layer: number, offset: number, length: number): number {
    return this.pending.has(`${layer}:${offset}`) ? 0 : this.gradients * length * 4;
  }

  private allocate(length: number): OwnedBlock {
    const block = this.backend.allocateBlock(this.gradients, length);
    const bytes = this.gradients * length * 4;
    this.accounting?.allocated(bytes);
    let held = true;
    return {
      get values() {
        return block.values;
      },
      gradients: block.gradients,
      length: block.length,
      release: () => {
        if (!held) return;
        held = false;
        block.release();
        this.accounting?.released(bytes);
      },
    };
  }

  /** Elements of the layer whose Gram update is done for all K gradients. */
  reducedElements(layer: number): number {
    return this.reduced[layer] ?? 0;
  }

  /** Ranges still waiting for some gradient (each holds K × its length floats). */
  get pendingRanges(): number {
    return this.pending.size;
  }

  /** True once every element of every layer has been reduced for all K gradients. */
  isComplete(): boolean {
    return this.pending.size === 0 && this.reduced.every((n, layer) => n === this.layerSizes[layer]);
  }

  /** The layer's K×K Gram matrix (row-major float64): ⟨g_i, g_j⟩ over the elements reduced so far. */
  gram(layer: number): Float64Array {
    const gram = this.grams[layer];
    if (gram === undefined) throw new RangeError(`layer ${layer} is not one of the step's ${this.layerSizes.length} layers`);
    return gram;
  }

  /** Frees the blocks of ranges that will not complete (an incomplete step, a timeout). */
  release(): void {
    for (const range of this.pending.values()) range.block.release();
    this.pending.clear();
  }
}
