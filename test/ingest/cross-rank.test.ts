// Data-parallel dense steps on the assembler with real backends: every rank's chunks of a step join into one
// Gram over all world·k micro-batch gradients. Checked against that Gram computed here in float64 from the same
// synthetic gradients: each rank's micro-batch and accumulated norms, the all-reduced norm (the ranks' average),
// the ranks' cosines, and which rank is flagged as disagreeing; memory held only until the step is joined.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackend } from '../../src/compute/backends.js';
import { createReferenceBackend } from '../../src/compute/reference-backend.js';
import type { ReductionBackend } from '../../src/compute/reduction-backend.js';
import type { CompletedStep } from '../../src/ingest/completed-step.js';
import { ByteBudget } from '../../src/ingest/dense-rank-step.js';
import type { RunLayout } from '../../src/ingest/run-layout.js';
import { StepAssembler } from '../../src/ingest/step-assembler.js';
import { rankDisagreements } from '../../src/stats/gradient-diversity.js';
import { AlignedPayloads } from '../../src/transport/aligned-copy.js';
import type { GradientShard__Output } from '../../src/transport/generated/noisescope/v1/GradientShard.js';
import { microGradients, seeded } from '../support/dense-gradients.js';
import { end } from './fixtures.js';

const SIZES = [2500, 300];
const CHUNK = 1000; // layer 0 in 3 uneven chunks
const K = 2;

const layout = (worldSize: number): RunLayout => ({
  run: 'r',
  worldSize,
  layers: SIZES.map((numel, i) => ({ name: `l${i}`, numel, kind: 'Linear' })),
  uncoveredLayers: [],
  datasetSize: null,
  every: 1,
  mode: 'dense',
  optimizer: null,
  policy: {},
});

const backends: Record<string, ReductionBackend> = {};
beforeAll(async () => {
  backends.reference = createReferenceBackend();
  backends['wasm-simd'] = await createBackend('wasm-simd');
});
afterAll(() => Object.values(backends).forEach((b) => b.dispose()));

type Gradients = Float32Array[][][]; // [rank][microBatch][layer]

/** Each rank's k micro-batch gradients: a shared signal plus noise; `corrupt` changes one rank's. */
function gradients(world: number, seed: number, corrupt?: { rank: number; how: 'negate' | 'noise' }): Gradients {
  const all = microGradients(seed, world * K, SIZES, { signal: 1, noise: 0.5 });
  const noise = seeded(seed + 99);
  return Array.from({ length: world }, (_, r) =>
    all.slice(r * K, (r + 1) * K).map((layers) =>
      layers.map((values) => {
        if (corrupt?.rank !== r) return values;
        return corrupt.how === 'negate' ? values.map((x) => -x) : values.map(() => 20 * (2 * noise() - 1));
      }),
    ),
  );
}

function chunk(step: number, microBatch: number, layer: number, offset: number, values: Float32Array): GradientShard__Output {
  const data = new Uint8Array(values.slice().buffer);
  return { step, microBatch, examples: 8 + microBatch, layer, microBatches: K, payload: 'dense', dense: { offset, dtype: 'DTYPE_F32', data }, sqNorms: null, sketch: null, perExample: null };
}

/** Rank r's shards of a step, layer by layer and chunk by chunk. */
function shardsOf(step: number, mine: Float32Array[][]): GradientShard__Output[] {
  const out: GradientShard__Output[] = [];
  mine.forEach((layers, j) =>
    layers.forEach((values, l) => {
      for (let offset = 0; offset < values.length; offset += CHUNK) out.push(chunk(step, j, l, offset, values.subarray(offset, offset + CHUNK)));
    }),
  );
  return out;
}

const stepEnd = (step: number) => end(step, K, { accumulatedSqNorms: [], localExamples: 8 + 9 });

/** Sends every rank's chunks interleaved (rank 0's first chunk, rank 1's first, ...), then each rank's end. */
async function run(a: StepAssembler, step: number, g: Gradients): Promise<CompletedStep> {
  const perRank = g.map((mine) => shardsOf(step, mine));
  const longest = Math.max(...perRank.map((s) => s.length));
  for (let i = 0; i < longest; i++) perRank.forEach((s, r) => s[i] && a.addShard(r, s[i]!));
  let outcome;
  for (let r = 0; r < g.length; r++) {
    await a.settling(r, step);
    outcome = a.endStep(r, stepEnd(step));
    if (r < g.length - 1) expect(outcome.kind).toBe('waiting-for-ranks');
  }
  if (outcome?.kind !== 'completed') throw new Error(`step ${step}: ${JSON.stringify(outcome)}`);
  return outcome.step;
}

const dot = (a: Float32Array, b: Float32Array) => a.reduce((s, x, i) => s + x * (b[i] as number), 0);
const sum = (xs: Iterable<number>) => [...xs].reduce((s, x) => s + x, 0);
/** ⟨Σ_{i∈A} g_i, Σ_{j∈B} g_j⟩ of one layer, in float64. */
const inner = (a: Float32Array[], b: Float32Array[]) => sum(a.flatMap((x) => b.map((y) => dot(x, y))));

const assembler = (world: number, backend: ReductionBackend, limit = 1 << 24) =>
  new StepAssembler(layout(world), { backend, budget: new ByteBudget(limit), payloads: new AlignedPayloads() });

describe('data-parallel dense steps: one Gram over every rank', () => {
  it.each(['reference', 'wasm-simd'])('give each rank\'s micro-batch and accumulated norms and the all-reduced norm of the whole Gram (%s)', async (name) => {
    const world = 3;
    const g = gradients(world, 1);
    const a = assembler(world, backends[name]!);
    const step = await run(a, 0, g);
    expect(a.denseBytesHeld).toBe(0);
    const close = (got: readonly number[], want: number[]) => got.forEach((x, i) => expect(x).toBeCloseTo(want[i]!, 6 - Math.ceil(Math.log10(Math.abs(want[i]!)))));
    step.ranks.forEach((rankStep, r) => {
      expect(rankStep.rank).toBe(r);
      expect(rankStep.microExamples).toEqual([8, 9]);
      rankStep.microSqNorms.forEach((row, j) => close(row, SIZES.map((_, l) => dot(g[r]![j]![l]!, g[r]![j]![l]!))));
      close(rankStep.accumulatedSqNorms, SIZES.map((_, l) => inner(g[r]!.map((m) => m[l]!), g[r]!.map((m) => m[l]!))));
      const everyone = (l: number) => g.flatMap((mine) => mine.map((m) => m[l]!));
      close(rankStep.reducedSqNorms!, SIZES.map((_, l) => inner(everyone(l), everyone(l)) / world ** 2));
      // Rank-level cosines: ⟨a_r, a_s⟩/(|a_r||a_s|) of the accumulated gradients over the whole model.
      const acc = (s: number, l: number) => g[s]!.map((m) => m[l]!);
      const cos = (s: number) => sum(SIZES.map((_, l) => inner(acc(r, l), acc(s, l)))) / Math.sqrt(sum(SIZES.map((_, l) => inner(acc(r, l), acc(r, l)))) * sum(SIZES.map((_, l) => inner(acc(s, l), acc(s, l)))));
      const across = rankStep.diversity!.acrossRanks!;
      across.cosines.forEach((c, s) => expect(c).toBeCloseTo(cos(s), 9));
      expect(across.disagrees).toBe(false);
    });
    expect(step.globalExamples).toBe(world * 17);
  });

  it('agree with norms mode sent the same figures (the estimator sees the same step)', async () => {
    const world = 2;
    const g = gradients(world, 2);
    const dense = await run(assembler(world, backends.reference!), 0, g);
    const norms = new StepAssembler({ ...layout(world), mode: 'norms' });
    let outcome;
    dense.ranks.forEach((rankStep, r) => {
      rankStep.microSqNorms.forEach((values, j) => norms.addShard(r, { step: 0, microBatch: j, examples: 8 + j, layer: 0, payload: 'sqNorms', sqNorms: { values: [...values] }, perExample: null } as GradientShard__Output));
      outcome = norms.endStep(r, end(0, K, { accumulatedSqNorms: [...rankStep.accumulatedSqNorms], reducedSqNorms: [...rankStep.reducedSqNorms!], localExamples: 17 }));
    });
    if (outcome!.kind !== 'completed') throw new Error('norms step did not complete');
    const strip = (s: CompletedStep) => s.ranks.map(({ diversity: _, reducedIsShard: __, ...rest }) => rest);
    expect(strip(outcome!.step)).toEqual(strip(dense));
  });

  it('flag the rank whose gradient disagrees, by rank: noise on 1 of 2 ranks, a negation on 1 of 3', async () => {
    const flagged = async (world: number, corrupt?: { rank: number; how: 'negate' | 'noise' }) => {
      const step = await run(assembler(world, backends['wasm-simd']!), 0, gradients(world, 3, corrupt));
      return { ranks: step.ranks.filter((r) => r.diversity!.acrossRanks!.disagrees).map((r) => r.rank), says: rankDisagreements(step.ranks.map((r) => r.diversity!)) };
    };
    expect(await flagged(2)).toEqual({ ranks: [], says: [] });
    expect(await flagged(3)).toEqual({ ranks: [], says: [] });
    const noisy = await flagged(2, { rank: 1, how: 'noise' });
    expect(noisy.ranks).toEqual([1]);
    expect(noisy.says[0]).toMatch(/^rank 1 disagrees \(cos -?0\.0\d\)$/);
    const negated = await flagged(3, { rank: 2, how: 'negate' });
    expect(negated.ranks).toEqual([2]);
    expect(negated.says[0]).toMatch(/^rank 2 disagrees \(cos -0\.\d\d\)$/);
  });

  it('hold a range only until every rank sent it, and release a step a rank never ends at the partial-step timeout', async () => {
    const world = 2;
    const g = gradients(world, 4);
    const a = assembler(world, backends.reference!);
    const gramBytes = SIZES.length * (world * K) ** 2 * 8;
    const [first] = shardsOf(0, g[0]!);
    a.addShard(0, first!);
    expect(a.denseBytesHeld).toBe(gramBytes + world * K * CHUNK * 4); // one block for all world·k gradients
    for (const s of shardsOf(0, g[0]!).slice(1)) a.addShard(0, s);
    await a.settling(0, 0);
    expect(a.endStep(0, stepEnd(0)).kind).toBe('waiting-for-ranks');
    expect(a.denseBytesHeld).toBeGreaterThan(gramBytes); // rank 1's side of every range is still to come
    const expired = a.expirePartial(Date.now() + 10_000, 1000);
    expect(expired.map((s) => s.skipReason)).toEqual(['partial: rank 1 of 2 never ended step 0 within 1 s — excluded']);
    expect(a.denseBytesHeld).toBe(0);
    // Rank 1's late chunks of the given-up step are dropped without being held.
    for (const s of shardsOf(0, g[1]!)) a.addShard(1, s);
    expect(a.denseBytesHeld).toBe(0);
  });

  it('report a step one rank skipped (non-finite gradients) as skipped, holding nothing', async () => {
    const a = assembler(2, backends.reference!);
    shardsOf(0, gradients(2, 9)[0]!).forEach((s) => a.addShard(0, s));
    await a.settling(0, 0);
    expect(a.endStep(0, stepEnd(0)).kind).toBe('waiting-for-ranks');
    const outcome = a.endStep(1, end(0, K, { skipped: true, skipReason: 'non-finite gradient', accumulatedSqNorms: [], localExamples: 0 }));
    expect(outcome.kind === 'completed' && outcome.step.skipReason).toBe('non-finite gradient');
    expect(a.denseBytesHeld).toBe(0);
  });

  it('give up the steps a restarted rank had chunks in, and count the new session\'s steps of the same numbers', async () => {
    const world = 2;
    const a = assembler(world, backends.reference!);
    const old = gradients(world, 7);
    shardsOf(0, old[1]!).forEach((s) => a.addShard(1, s));
    shardsOf(0, old[0]!).slice(0, 2).forEach((s) => a.addShard(0, s));
    a.expirePartial(Date.now(), 1000); // nothing pending: no rank ended step 0
    expect(a.denseBytesHeld).toBeGreaterThan(0);
    a.restartRank(1);
    expect(a.denseBytesHeld).toBe(0);
    // Both ranks' new sessions number from 0 again (rank 0 restarted too, as torchrun elastic does).
    a.restartRank(0);
    const step = await run(a, 0, gradients(world, 8));
    expect(step.ranks.map((r) => r.rank)).toEqual([0, 1]);
  });

  it('exclude a step whose ranks disagree on k, or one rank of which left a range out, saying which', async () => {
    const world = 2;
    const g = gradients(world, 5);
    const a = assembler(world, backends.reference!);
    a.addShard(0, shardsOf(0, g[0]!)[0]!);
    expect(() => a.addShard(1, { ...shardsOf(0, g[1]!)[0]!, microBatches: 3 })).toThrow(
      "step 0 micro-batch 0 layer 0 offset 0: rank 1 says micro_batches 3, but other ranks' chunks of this step said 2: a data-parallel dense step needs the same micro-batch count on every rank",
    );
    expect(a.denseBytesHeld).toBe(0);

    const shards = g.map((mine) => shardsOf(1, mine));
    shards[0]!.forEach((s) => a.addShard(0, s));
    shards[1]!.filter((s) => !(s.layer === 0 && s.dense!.offset === 2000 && s.microBatch === 1)).forEach((s) => a.addShard(1, s));
    await a.settling(0, 1);
    expect(a.endStep(0, stepEnd(1)).kind).toBe('waiting-for-ranks');
    await a.settling(1, 1);
    const outcome = a.endStep(1, stepEnd(1));
    expect(outcome.kind === 'incomplete' && outcome.error.message).toBe(
      "step 1: dense chunks are missing: layer 'l0' has 2000 of 2500 elements from every micro-batch: the step is excluded",
    );
    expect(a.denseBytesHeld).toBe(0);
    expect((await run(a, 2, gradients(world, 6))).ranks).toHaveLength(2); // later steps count
  });
});
