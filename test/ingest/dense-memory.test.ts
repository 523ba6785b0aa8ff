// The bytes a run holds for incomplete dense steps, observed on the assembler with a real backend:
// bounded, and released when a step completes, is refused, or is given up (a later step ended, or
// more than STEP_LIMITS.openStepsPerRank steps open).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackend } from '../../src/compute/backends.js';
import type { ReductionBackend } from '../../src/compute/reduction-backend.js';
import { ByteBudget } from '../../src/ingest/dense-rank-step.js';
import { STEP_LIMITS, StepAssembler } from '../../src/ingest/step-assembler.js';
import { AlignedPayloads } from '../../src/transport/aligned-copy.js';
import type { GradientShard__Output } from '../../src/transport/generated/noisescope/v1/GradientShard.js';
import { end, layout } from './fixtures.js';

let backend: ReductionBackend;
beforeAll(async () => {
  backend = await createBackend('wasm-simd');
});
afterAll(() => backend.dispose());

const K = 2;
// Run 'r' in dense mode: layers a (10) and b (5); one chunk per layer.
const GRAM_BYTES = 2 * K * K * 8;
const BLOCK_A = K * 10 * 4;

const chunk = (step: number, microBatch: number, layer: number, values: number[]): GradientShard__Output => ({
  step,
  microBatch,
  examples: 8,
  layer,
  microBatches: K,
  payload: 'dense',
  dense: { offset: 0, dtype: 'DTYPE_F32', data: new Uint8Array(Float32Array.from(values).buffer) },
  sqNorms: null,
  sketch: null,
  perExample: null,
});
const ones = (n: number) => new Array<number>(n).fill(1);

function assembler(limit = 1 << 20) {
  return new StepAssembler({ ...layout(), mode: 'dense' }, { backend, budget: new ByteBudget(limit), payloads: new AlignedPayloads() });
}

/** Every chunk of a step, then its end (after its reductions, as the ingest does). */
async function completeStep(a: StepAssembler, step: number) {
  for (let j = 0; j < K; j++) {
    a.addShard(0, chunk(step, j, 0, ones(10)));
    a.addShard(0, chunk(step, j, 1, ones(5)));
  }
  await a.settling(0, step);
  return a.endStep(0, end(step, K, { accumulatedSqNorms: [] }));
}

describe('dense memory held for incomplete steps', () => {
  it('holds the Gram matrices and the open blocks, and nothing once the step completes', async () => {
    const a = assembler();
    a.addShard(0, chunk(0, 0, 0, ones(10)));
    expect(a.denseBytesHeld).toBe(GRAM_BYTES + BLOCK_A);
    a.addShard(0, chunk(0, 1, 0, ones(10)));
    a.addShard(0, chunk(0, 0, 1, ones(5)));
    a.addShard(0, chunk(0, 1, 1, ones(5)));
    await a.settling(0, 0);
    const outcome = a.endStep(0, end(0, K, { accumulatedSqNorms: [] }));
    expect(outcome.kind).toBe('completed');
    // |h_j|² = 10 and 5; |h_0 + h_1|² = 40 and 20.
    expect(outcome.kind === 'completed' && outcome.step.ranks[0]).toMatchObject({ microSqNorms: [[10, 5], [10, 5]], accumulatedSqNorms: [40, 20] });
    expect(a.denseBytesHeld).toBe(0);
  });

  it('releases a step given up because a later step ended', async () => {
    const a = assembler();
    a.addShard(0, chunk(0, 0, 0, ones(10)));
    expect(a.denseBytesHeld).toBeGreaterThan(0);
    expect((await completeStep(a, 1)).kind).toBe('completed');
    expect(a.denseBytesHeld).toBe(0);
    expect(a.takeAbandoned()).toBe(1);
  });

  it('stays bounded by the open-step limit, releasing the oldest step it evicts', () => {
    const a = assembler();
    for (let step = 0; step < STEP_LIMITS.openStepsPerRank + 5; step++) a.addShard(0, chunk(step, 0, 0, ones(10)));
    expect(a.denseBytesHeld).toBe(STEP_LIMITS.openStepsPerRank * (GRAM_BYTES + BLOCK_A));
    expect(a.takeAbandoned()).toBe(5);
  });

  it('releases a step when one of its chunks is refused, and drops its later chunks without holding them', () => {
    const a = assembler();
    a.addShard(0, chunk(0, 0, 0, ones(10)));
    expect(() => a.addShard(0, chunk(0, 0, 0, ones(10)))).toThrow(/gradient 0 already sent layer 0 offset 0/);
    expect(a.denseBytesHeld).toBe(0);
    a.addShard(0, chunk(0, 0, 1, ones(5)));
    expect(a.denseBytesHeld).toBe(0);
    const outcome = a.endStep(0, end(0, K, { accumulatedSqNorms: [] }));
    expect(outcome.kind === 'incomplete' && outcome.error.message).toMatch(/^step 0 is excluded: a dense chunk was refused/);
  });

  it('refuses what would pass the budget, naming the limit, and holds nothing for that step', () => {
    const a = assembler(GRAM_BYTES + BLOCK_A - 1);
    expect(() => a.addShard(0, chunk(0, 0, 0, ones(10)))).toThrow(`would hold ${GRAM_BYTES + BLOCK_A} bytes of dense data for incomplete steps, over the limit of ${GRAM_BYTES + BLOCK_A - 1} bytes shared by all runs`);
    expect(a.denseBytesHeld).toBe(0);
  });

  it('releases everything on releaseAll (the sidecar closing)', () => {
    const a = assembler();
    a.addShard(0, chunk(0, 0, 0, ones(10)));
    a.addShard(0, chunk(1, 0, 1, ones(5)));
    a.releaseAll();
    expect(a.denseBytesHeld).toBe(0);
  });
});
