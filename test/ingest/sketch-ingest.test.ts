// Sketch mode over real gRPC: sketches are reduced like dense layers of m elements (so the step's figures are
// exactly those norms mode gives for the sketch vectors), declared in Hello, named in RunInfo, and every bad
// sketch is refused with a reason, its step excluded as skipped, the steps around it kept.
import { status } from '@grpc/grpc-js';
import { filter, firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';
import type { RankMessage } from '../../src/transport/generated/noisescope/v1/RankMessage.js';
import type { StepStats } from '../../src/types.js';
import { microGradients } from '../support/dense-gradients.js';
import { encodeDense, hello, LAYERS, normsStepOf, RankStream, type TestDtype } from '../support/rank-client.js';
import { sidecarEachTest } from '../support/sidecar-each-test.js';

/** fc1.weight (8192) sketched to 1024, fc1.bias (128) whole, fc2.weight (1280) sketched to 512. */
const SIZES = [1024, 128, 512];
const K = 3;
const SKETCH_HELLO = hello({ mode: 'MODE_SKETCH', sketch: { sizes: SIZES, dtype: 'DTYPE_F32' } });
const seedOf = (step: number) => 1000 + step;

/** The step's sketches as the hook sends them: layers 0 alone, then 1–2 packed in one message, every micro-batch. */
function sketchStep(step: number, sketches: readonly (readonly Float32Array[])[], seed = seedOf(step), dtype: TestDtype = 'DTYPE_F32'): RankMessage[] {
  const messages: RankMessage[] = [];
  for (const [first, count] of [[0, 1], [1, 2]] as const) {
    sketches.forEach((layers, microBatch) => {
      const values = layers.slice(first, first + count);
      const size = values.reduce((n, v) => n + v.length, 0);
      const data = Buffer.concat(values.map((v) => encodeDense(v, dtype)));
      messages.push({ shard: { step, microBatch, examples: 16, layer: first, microBatches: sketches.length, sketch: { seed, size, dtype, data, layers: count } } });
    });
  }
  messages.push({ stepEnd: { step, microBatches: sketches.length, localExamples: 16 * sketches.length, globalExamples: 16 * sketches.length, lr: 0.1, loss: Number.NaN } });
  return messages;
}

const sketchesOf = (step: number) => microGradients(step + 1, K, SIZES, { signal: 0.3, noise: 1 });
const shardAt = (messages: RankMessage[], i: number) => messages[i]!.shard!;
const withSketch = (messages: RankMessage[], i: number, change: object): RankMessage[] =>
  messages.map((m, q) => (q === i ? { shard: { ...shardAt(messages, i), sketch: { ...shardAt(messages, i).sketch!, ...change } } } : m));

function worstRelativeDifference(a: readonly StepStats[], b: readonly StepStats[]): number {
  let worst = 0;
  a.forEach((s, i) => {
    for (const field of ['gradSqNorm', 'traceSigma', 'bSimple'] as const) {
      const x = s.raw![field];
      const y = b[i]!.raw![field];
      worst = Math.max(worst, Math.abs(x - y) / Math.abs(y));
    }
  });
  return worst;
}

describe('sketch shards', () => {
  const t = sidecarEachTest();

  it('give the figures norms mode gives for the sketch vectors, with diversity, and RunInfo names the sketches', async () => {
    const sketched = t.steps(4, 'sketch-run');
    const norms = t.steps(4, 'norms-run');
    const s = new RankStream(t.client);
    const n = new RankStream(t.client);
    s.send({ hello: { ...SKETCH_HELLO.hello!, run: 'sketch-run' } });
    n.send(hello({ run: 'norms-run', layers: LAYERS.map((l, i) => ({ ...l, numel: SIZES[i]! })) }));
    for (let step = 0; step < 4; step++) {
      for (const m of sketchStep(step, sketchesOf(step))) s.send(m);
      for (const m of normsStepOf(step, sketchesOf(step))) n.send(m);
    }
    const [sketchStats, normsStats] = [await sketched, await norms];
    expect(s.refusals()).toEqual([]);
    expect(worstRelativeDifference(sketchStats, normsStats)).toBeLessThan(1e-6);
    expect(sketchStats[0]!.diversity![0]).toMatchObject({ rank: 0, microBatches: K });
    const runs = await firstValueFrom(t.sidecar.runs$.pipe(filter((r) => r.some((x) => x.run === 'sketch-run'))));
    const info = runs.find((x) => x.run === 'sketch-run')!;
    expect(info.mode).toBe('sketch');
    expect(info.layers).toEqual(LAYERS);
    expect(info.sketch).toEqual({ sizes: SIZES, dtype: 'DTYPE_F32' });
    s.end();
    n.end();
  });

  it('read fp16 sketches as the same values sent in fp32', async () => {
    const half = t.steps(2, 'half-run');
    const full = t.steps(2, 'full-run');
    const h = new RankStream(t.client);
    const f = new RankStream(t.client);
    h.send({ hello: { ...SKETCH_HELLO.hello!, run: 'half-run', sketch: { sizes: SIZES, dtype: 'DTYPE_F16' } } });
    f.send({ hello: { ...SKETCH_HELLO.hello!, run: 'full-run' } });
    for (let step = 0; step < 2; step++) {
      const exactInHalf = microGradients(step + 1, K, SIZES, { halfExact: true });
      for (const m of sketchStep(step, exactInHalf, seedOf(step), 'DTYPE_F16')) h.send(m);
      for (const m of sketchStep(step, exactInHalf)) f.send(m);
    }
    expect(worstRelativeDifference(await half, await full)).toBe(0);
    expect(h.refusals()).toEqual([]);
    h.end();
    f.end();
  });

  type Case = readonly [name: string, mutate: (m: RankMessage[]) => RankMessage[], code: number, why: RegExp];
  const CASES: readonly Case[] = [
    ['a size other than declared', (m) => withSketch(m, 1, { size: 1000, data: Buffer.alloc(4000) }), status.INVALID_ARGUMENT,
      /step 1 micro-batch 1 sketch of layer 0: size 1000, but the run declared 1024 for layer 'fc1.weight': the step is excluded/],
    ['a packed size other than declared', (m) => withSketch(m, 4, { size: 600, data: Buffer.alloc(2400) }), status.INVALID_ARGUMENT,
      /sketch of layers 1..2: size 600, but the run declared 128 \+ 512 = 640 for these layers/],
    ['another dtype', (m) => withSketch(m, 2, { dtype: 'DTYPE_F16', data: Buffer.alloc(2048) }), status.INVALID_ARGUMENT,
      /dtype DTYPE_F16, but the run declared DTYPE_F32 sketches/],
    ['data of the wrong length', (m) => withSketch(m, 0, { data: Buffer.alloc(100) }), status.INVALID_ARGUMENT,
      /100 bytes of data for 1024 DTYPE_F32 values \(4096 bytes\)/],
    ['a seed that disagrees between micro-batches', (m) => withSketch(m, 2, { seed: 7 }), status.INVALID_ARGUMENT,
      /micro-batch 2 sketch of layer 0: seed 7, but earlier sketches of this step \(every micro-batch and rank share one\) had seed 1001/],
    ['layers beyond the run', (m) => withSketch(m, 3, { layers: 3 }), status.INVALID_ARGUMENT,
      /sketch of layers 1..3: run 'test-run' declared 3 layers/],
    ['a dense chunk in a sketch run', (m) => m.map((x, i) => (i === 0 ? { shard: { ...shardAt(m, 0), sketch: null, dense: { offset: 0, dtype: 'DTYPE_F32', data: Buffer.alloc(4096) } } } : x)), status.INVALID_ARGUMENT,
      /a dense shard, but run 'test-run' said mode sketch in its Hello \(dense shards need MODE_DENSE\)/],
  ];

  it.each(CASES)('%s: refused with a reason, the step excluded as skipped, the steps around it kept', async (_name, mutate, code, why) => {
    const got = t.steps(3);
    const rank = new RankStream(t.client);
    rank.send(SKETCH_HELLO);
    for (const m of sketchStep(0, sketchesOf(0))) rank.send(m);
    for (const m of mutate(sketchStep(1, sketchesOf(1)))) rank.send(m);
    for (const m of sketchStep(2, sketchesOf(2))) rank.send(m);
    const steps = await got;
    expect(steps.map((s) => [s.step, s.skipped])).toEqual([[0, false], [1, true], [2, false]]);
    expect(steps[1]!.note).toMatch(/a sketch was refused \(.*\): the step is excluded/);
    expect(steps[2]!.raw).not.toBeNull();
    await expect.poll(() => rank.refusals().length).toBe(1);
    const [refusal] = rank.refusals();
    expect(refusal).toMatchObject({ step: 1, code });
    expect(refusal!.message).toMatch(why);
    rank.end();
  });

  it('refuses a sketch in a norms run, and a Hello whose sketches do not fit its layers or its run', async () => {
    const rank = new RankStream(t.client);
    rank.send(hello());
    rank.send(sketchStep(0, sketchesOf(0))[0]!);
    await expect.poll(() => rank.refusals().length).toBe(1);
    expect(rank.refusals()[0]!.message).toBe("step 0 micro-batch 0: a sketch shard, but run 'test-run' said mode norms in its Hello (sketch shards need MODE_SKETCH)");
    rank.end();

    const helloRefusal = async (message: RankMessage) => {
      const other = new RankStream(t.client);
      other.send(message);
      await expect.poll(() => other.status).not.toBeNull();
      return other.status!.details;
    };
    expect(await helloRefusal(hello({ run: 'a', mode: 'MODE_SKETCH' }))).toMatch(/Hello: mode MODE_SKETCH needs sketch/);
    expect(await helloRefusal(hello({ run: 'b', mode: 'MODE_SKETCH', sketch: { sizes: [1024, 129, 512], dtype: 'DTYPE_F32' } }))).toMatch(
      /sketch size 129 of layer 1 'fc1.bias' is outside 1..min\(numel 128, 262144\)/,
    );
    expect(await helloRefusal(hello({ run: 'c', mode: 'MODE_SKETCH', sketch: { sizes: [1024], dtype: 'DTYPE_F32' } }))).toMatch(/declares 1 sketch sizes for 3 layers/);
    const first = new RankStream(t.client);
    first.send(hello({ run: 'two', worldSize: 2, mode: 'MODE_SKETCH', sketch: { sizes: SIZES, dtype: 'DTYPE_F32' } }));
    await expect.poll(() => first.received.length).toBe(1);
    expect(await helloRefusal(hello({ run: 'two', rank: 1, worldSize: 2, mode: 'MODE_SKETCH', sketch: { sizes: [1024, 128, 256], dtype: 'DTYPE_F32' } }))).toMatch(
      /run 'two' is already attached with sketch size 512 for layer 2; this rank declared 256/,
    );
    first.end();
  });
});
