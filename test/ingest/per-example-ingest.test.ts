import { describe, expect, it } from 'vitest';
import { checkSameLayout, layoutFromHello } from '../../src/ingest/run-layout.js';
import { CAUCHY_SCHWARZ_SLACK, StepAssembler } from '../../src/ingest/step-assembler.js';
import { perExampleSampledIn, sourceOf } from '../../src/ingest/completed-step.js';
import type { Hello__Output } from '../../src/transport/generated/noisescope/v1/Hello.js';
import { end, layout, shard as normsShard } from './fixtures.js';

// 8 examples: |Σh_e|² may be at most 8·Σ|h_e|².
const shard = (step: number, microBatch: number, sums: number[] | null, values = [1, 2]) => normsShard(step, microBatch, values, 8, sums);

describe('per-example sums in the step assembler', () => {
  it('carries them into the rank step, one row per micro-batch, and the step reports the per-example source', () => {
    const a = new StepAssembler(layout());
    a.addShard(0, shard(0, 1, [0.5, 0.6]));
    a.addShard(0, shard(0, 0, [0.3, 0.4]));
    const outcome = a.endStep(0, end(0, 2));
    if (outcome.kind !== 'completed') throw new Error(`expected a completed step, got ${outcome.kind}`);
    expect(outcome.step.ranks[0]?.microExampleSqNormSums).toEqual([
      [0.3, 0.4],
      [0.5, 0.6],
    ]);
    expect(sourceOf(outcome.step)).toBe('per-example');
  });

  it('leaves them null when no shard carries them', () => {
    const a = new StepAssembler(layout());
    a.addShard(0, shard(0, 0, null));
    const outcome = a.endStep(0, end(0, 1));
    expect(outcome.kind === 'completed' && outcome.step.ranks[0]?.microExampleSqNormSums).toBeNull();
  });

  it('refuses a wrong length, a non-finite or a negative sum, naming field and layer', () => {
    const a = new StepAssembler(layout());
    expect(() => a.addShard(0, shard(0, 0, [1]))).toThrow(/per_example.sums has 1 values; run 'r' declared 2 layers/);
    expect(() => a.addShard(0, shard(0, 0, []))).toThrow(/per_example.sums has 0 values/);
    expect(() => a.addShard(0, shard(0, 0, [1, Number.NaN]))).toThrow(/per_example.sums\[1\] \(layer 'b'\) is NaN/);
    expect(() => a.addShard(0, shard(0, 0, [Infinity, 1]))).toThrow(/per_example.sums\[0\] \(layer 'a'\) is Infinity/);
    expect(() => a.addShard(0, shard(0, 0, [1, -0.5]))).toThrow(/per_example.sums\[1\] \(layer 'b'\) is negative/);
    // Nothing was taken in: the step still completes from a good shard.
    a.addShard(0, shard(0, 0, [1, 1]));
    expect(a.endStep(0, end(0, 1)).kind).toBe('completed');
  });

  it('refuses a micro-batch norm above b·Σ|h_e|² (Cauchy–Schwarz) beyond rounding, and accepts equality', () => {
    const a = new StepAssembler(layout());
    // Layer b: |Σh|² = 2 but 8 × 0.2 = 1.6.
    expect(() => a.addShard(0, shard(0, 0, [1, 0.2]))).toThrow(
      /step 0 micro-batch 0: sq_norms\[1\] \(layer 'b'\) = 2 exceeds examples × per_example.sums\[1\] = 8 × 0.2 = 1.6.*Cauchy–Schwarz.*mean vs sum loss/,
    );
    // Equality (every example the same) and rounding above it are fine.
    a.addShard(0, shard(0, 0, [1 / 8, (2 / 8) * (1 - CAUCHY_SCHWARZ_SLACK / 2)]));
    expect(a.endStep(0, end(0, 1)).kind).toBe('completed');
  });

  it('takes sums below the bound from a shard that says sampled (per_example.sampled), and the step says so', () => {
    const a = new StepAssembler(layout());
    const sampled = (step: number, microBatch: number, sums: number[]) => {
      const s = shard(step, microBatch, sums);
      return { ...s, perExample: { sums, sampled: true } };
    };
    // Layer b: |Σh|² = 2 but 8 × 0.2 = 1.6, an unbiased estimate may be that low.
    a.addShard(0, sampled(0, 0, [1, 0.2]));
    a.addShard(0, shard(0, 1, [1, 1]));
    const outcome = a.endStep(0, end(0, 2));
    if (outcome.kind !== 'completed') throw new Error(`expected a completed step, got ${outcome.kind}`);
    expect(outcome.step.ranks[0]?.microExampleSqNormSums).toEqual([[1, 0.2], [1, 1]]);
    expect(outcome.step.ranks[0]?.perExampleSampled).toBe(true);
    expect(perExampleSampledIn(outcome.step)).toBe(true);
    // The same sums unmarked are refused; still-checked fields are checked on a sampled shard.
    expect(() => a.addShard(0, shard(1, 0, [1, 0.2]))).toThrow(/sq_norms\[1\] \(layer 'b'\) = 2 exceeds.*Cauchy–Schwarz/);
    expect(() => a.addShard(0, sampled(1, 0, [1, -0.2]))).toThrow(/per_example.sums\[1\] \(layer 'b'\) is negative/);
    a.addShard(0, shard(1, 0, [1, 1]));
    const exact = a.endStep(0, end(1, 1));
    expect(exact.kind === 'completed' && exact.step.ranks[0]).not.toHaveProperty('perExampleSampled');
    expect(exact.kind === 'completed' && perExampleSampledIn(exact.step)).toBe(false);
  });

  it('excludes a step whose micro-batches mix shards with and without per-example sums, naming them', () => {
    const a = new StepAssembler(layout());
    a.addShard(0, shard(0, 0, [1, 1]));
    a.addShard(0, shard(0, 1, null));
    a.addShard(0, shard(0, 2, [1, 1]));
    const outcome = a.endStep(0, end(0, 3));
    expect(outcome.kind).toBe('incomplete');
    expect(outcome.kind === 'incomplete' && outcome.error.message).toBe(
      'step 0 is inconsistent: micro-batch shard(s) 0, 2 carry per_example and 1 do not; the step is excluded',
    );
    expect(a.takeAbandoned()).toBe(1);
    // The next step is unaffected.
    a.addShard(0, shard(1, 0, null));
    expect(a.endStep(0, end(1, 1)).kind).toBe('completed');
  });

  it('excludes a step whose ranks disagree on per-example sums, telling the rank that disagrees', () => {
    const a = new StepAssembler(layout(2));
    a.addShard(0, shard(0, 0, [1, 1]));
    a.addShard(1, shard(0, 0, null));
    expect(a.endStep(0, end(0, 1)).kind).toBe('waiting-for-ranks');
    const outcome = a.endStep(1, end(0, 1));
    expect(outcome.kind === 'incomplete' && outcome.error.message).toBe(
      "step 0 is inconsistent: rank 1 lacks per_example but rank 0 carries it; the step is excluded",
    );
    expect(a.takeAbandoned()).toBe(0);
    // Both ranks agree again at step 1.
    a.addShard(0, shard(1, 0, [1, 1]));
    a.addShard(1, shard(1, 0, [1, 1]));
    expect(a.endStep(1, end(1, 1)).kind).toBe('waiting-for-ranks');
    expect(a.endStep(0, end(1, 1)).kind).toBe('completed');
  });

  it('with three ranks, waits for the last and then excludes the step', () => {
    const a = new StepAssembler(layout(3));
    for (const [rank, sums] of [[0, [1, 1]], [1, null], [2, [1, 1]]] as const) a.addShard(rank, shard(0, 0, sums ? [...sums] : null));
    expect(a.endStep(0, end(0, 1)).kind).toBe('waiting-for-ranks');
    expect(a.endStep(1, end(0, 1)).kind).toBe('incomplete');
    expect(a.endStep(2, end(0, 1)).kind).toBe('excluded');
    expect(a.takeAbandoned()).toBe(1);
  });
});

const hello = (overrides: Partial<Hello__Output> = {}): Hello__Output => ({
  protocolVersion: 1,
  run: 'r',
  rank: 0,
  worldSize: 1,
  layers: [{ name: 'fc.weight', numel: 100, kind: 'Linear' }],
  uncoveredLayers: [],
  source: 'SOURCE_PER_EXAMPLE',
  mode: 'MODE_NORMS',
  datasetSize: 0,
  every: 1,
  dropped: 0,
  session: 's',
  optimizer: 'SGD',
  policy: null,
  ...overrides,
} as Hello__Output);

describe('uncovered layers in the Hello', () => {
  it('are carried into the run layout', () => {
    const uncovered = [{ name: 'attn.in_proj_weight', numel: 3, kind: 'MultiheadAttention' }];
    expect(layoutFromHello(hello({ uncoveredLayers: uncovered })).uncoveredLayers).toEqual(uncovered);
  });

  it('are validated like layers: a name, elements, unique, and distinct from the covered ones', () => {
    const bad: [Hello__Output['uncoveredLayers'], RegExp][] = [
      [[{ name: '', numel: 3, kind: 'x' }], /Hello: uncovered layer 0 has no name/],
      [[{ name: 'u', numel: 0, kind: 'x' }], /Hello: uncovered layer 0 'u' declares 0 elements/],
      [[{ name: 'u', numel: 1, kind: 'x' }, { name: 'u', numel: 1, kind: 'x' }], /layer name 'u' appears twice/],
      [[{ name: 'fc.weight', numel: 1, kind: 'x' }], /layer name 'fc.weight' appears twice \(in layers and uncovered_layers together\)/],
    ];
    for (const [uncoveredLayers, why] of bad) expect(() => layoutFromHello(hello({ uncoveredLayers }))).toThrow(why);
  });

  it('must agree between the ranks of a run', () => {
    const first = layoutFromHello(hello({ uncoveredLayers: [{ name: 'u', numel: 3, kind: 'x' }] }));
    expect(() => checkSameLayout(first, layoutFromHello(hello()))).toThrow(/already attached with uncovered layers u; this rank declared none/);
    expect(() => checkSameLayout(first, first)).not.toThrow();
  });
});
