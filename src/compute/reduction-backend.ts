// The one contract every reduction backend implements (issue 6, Compute).
//
// Unit of work: a GradientBlock = the same element range [offset, offset + length) of one
// layer, for all K gradients of a step (micro-batches × ranks), stored row-major as
// K rows of `length` float32. Why this shape:
//  - a Gram update over a range needs that range of every gradient at once, and nothing else:
//    the ingest keeps one block per range still waiting for a gradient, and frees it as soon as
//    its K×K inner products are added, so no whole gradient is ever held;
//  - the block is the aligned copy the ingest must make anyway (grpc-js hands bytes at odd
//    offsets), so a backend that allocates it (allocateBlock) receives the data where it reads
//    fastest (WebAssembly memory for wasm-simd) with no second copy;
//  - K rows of equal length are what a GPU kernel wants as a 3-D input, and what a blocked CPU
//    loop tiles over so that the K × tile working set stays in cache.
// Results are float64; backends that compute in float32 (gpu.js) sum short spans only and
// combine the spans in float64 (a float32 running sum stalls at 2^24).

export interface GradientBlock {
  /** K: how many gradients (rows). */
  readonly gradients: number;
  /** Elements per row. */
  readonly length: number;
  /** gradients × length values, row k = gradient k's elements of this range. */
  readonly values: Float32Array;
}

/** A block whose storage belongs to a backend; give it back with release() (safe twice). */
export interface OwnedBlock extends GradientBlock {
  release(): void;
}

export interface ReductionBackend {
  /** One of BACKEND_NAMES. */
  readonly name: string;
  /** What actually executes, e.g. 'gpu.js gpu mode → webasm (WebAssemblyKernel)'. */
  readonly mode: string;
  /** Storage for a block that this backend reads without copying. `values` may be re-created
   *  when the backend's memory grows: read it from the block each time, do not keep it. */
  allocateBlock(gradients: number, length: number): OwnedBlock;
  /** Adds the block's K×K inner products to `gram` (row-major K×K float64, kept symmetric). */
  addGram(block: GradientBlock, gram: Float64Array): Promise<void>;
  /** Σ values², accumulated in float64 (or in float64 over float32 spans, see above). */
  sumOfSquares(values: Float32Array): Promise<number>;
  /** Frees workers, kernels and memory; the backend is unusable afterwards. */
  dispose(): void;
}

/** Throws a RangeError unless `block` and `gram` have consistent shapes. */
export function checkGramShapes(block: GradientBlock, gram: Float64Array): void {
  const { gradients, length, values } = block;
  if (!Number.isInteger(gradients) || gradients < 1) throw new RangeError(`a block needs ≥ 1 gradient, got ${gradients}`);
  if (!Number.isInteger(length) || length < 0) throw new RangeError(`block length must be a non-negative integer, got ${length}`);
  if (values.length < gradients * length) throw new RangeError(`block holds ${values.length} values, needs ${gradients} × ${length}`);
  if (gram.length !== gradients * gradients) throw new RangeError(`gram has ${gram.length} entries, needs ${gradients}² = ${gradients * gradients}`);
}

/** Adds symmetric pair sums (upper triangle, i ≤ j, in row order) into a full K×K gram. */
export function addPairSums(pairSums: Float64Array, gradients: number, gram: Float64Array): void {
  let q = 0;
  for (let i = 0; i < gradients; i++) {
    for (let j = i; j < gradients; j++, q++) {
      const s = pairSums[q] as number;
      gram[i * gradients + j] = (gram[i * gradients + j] as number) + s;
      if (j !== i) gram[j * gradients + i] = (gram[j * gradients + i] as number) + s;
    }
  }
}

/** A block on a plain Float32Array (for backends with no special storage). */
export function heapBlock(gradients: number, length: number): OwnedBlock {
  return { gradients, length, values: new Float32Array(gradients * length), release: () => {} };
}
