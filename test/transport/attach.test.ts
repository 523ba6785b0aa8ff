import { status } from '@grpc/grpc-js';
import { filter, firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { accumulationStep, hello, RankStream } from '../support/rank-client.js';
import { sidecarEachTest } from '../support/sidecar-each-test.js';

// Four micro-batches of a 3-layer model: micro norms and the accumulated sum's norm.
const MICRO = [
  [4, 1, 2],
  [5, 1.2, 2.5],
  [3, 0.8, 1.5],
  [4.5, 1, 2],
];
const ACCUMULATED = [16 * 1.5, 16 * 0.4, 16 * 0.7]; // |Σh|² with |mean|² = 1.5, 0.4, 0.7

// In the optimizer's units (the accumulated gradient Σh): micro-batch i is k·h_i.
function totals() {
  const ySmall = (16 * MICRO.flat().reduce((a, b) => a + b, 0)) / 4;
  const yBig = ACCUMULATED.reduce((a, b) => a + b, 0);
  return { ySmall, yBig };
}

const t = sidecarEachTest();
const steps = t.steps;

describe('Attach', () => {
  it('welcomes a rank and turns its shards into a step estimate', async () => {
    const got = steps(1);
    const rank = new RankStream(t.client);
    rank.send(hello());
    for (const m of accumulationStep(0, MICRO, ACCUMULATED)) rank.send(m);
    const [stats] = await got;
    expect(rank.received[0]?.welcome).toMatchObject({ protocolVersion: 1, run: 'test-run', rank: 0 });
    expect(stats).toMatchObject({ step: 0, source: 'accumulation', globalBatch: 64, microBatches: 4, levels: 2 });
    // Two scales, x = 1/16 and 1/64: the paper's two-batch formulas on the totals.
    const { ySmall, yBig } = totals();
    const traceSigma = (ySmall - yBig) / (1 / 16 - 1 / 64);
    const gradSqNorm = (64 * yBig - 16 * ySmall) / (64 - 16);
    expect(stats?.raw?.traceSigma).toBeCloseTo(traceSigma, 9);
    expect(stats?.raw?.gradSqNorm).toBeCloseTo(gradSqNorm, 9);
    rank.end();
  });

  it('applies the finite-population correction when the hook declares the dataset size', async () => {
    const got = steps(1);
    const rank = new RankStream(t.client);
    rank.send(hello({ datasetSize: 200 }));
    for (const m of accumulationStep(0, MICRO, ACCUMULATED)) rank.send(m);
    const [stats] = await got;
    const { ySmall, yBig } = totals();
    const xSmall = 1 / 16 - 1 / 200;
    const xBig = 1 / 64 - 1 / 200;
    const traceSigma = (ySmall - yBig) / (xSmall - xBig);
    expect(stats?.raw?.traceSigma).toBeCloseTo(traceSigma, 9);
    expect(stats?.raw?.gradSqNorm).toBeCloseTo(yBig - traceSigma * xBig, 9);
  });

  it('says there is no estimate when a step has one micro-batch on one rank', async () => {
    const got = steps(1);
    const rank = new RankStream(t.client);
    rank.send(hello());
    for (const m of accumulationStep(0, [MICRO[0]!], MICRO[0]!)) rank.send(m);
    const [stats] = await got;
    expect(stats).toMatchObject({ source: 'none', raw: null, smoothed: null, levels: 0 });
    expect(stats?.note).toMatch(/no second batch scale/);
  });

  it('flags a step the hook skipped for non-finite gradients and keeps the run going', async () => {
    const got = steps(2);
    const rank = new RankStream(t.client);
    rank.send(hello());
    rank.send({ stepEnd: { step: 0, skipped: true, skipReason: 'non-finite gradient in fc1.weight' } });
    for (const m of accumulationStep(1, MICRO, ACCUMULATED)) rank.send(m);
    const [skipped, next] = await got;
    expect(skipped).toMatchObject({ step: 0, skipped: true, raw: null });
    expect(skipped?.note).toMatch(/non-finite gradient in fc1.weight/);
    expect(next).toMatchObject({ step: 1, skipped: false, stepsMeasured: 1 });
  });

  it('refuses each bad message with a status that says why, and loses nothing already accepted', async () => {
    const got = steps(3);
    const rank = new RankStream(t.client);
    rank.send(hello());
    for (const m of accumulationStep(0, MICRO, ACCUMULATED)) rank.send(m);
    const bad: [string, Parameters<RankStream['send']>[0]][] = [
      ['wrong layer count', { shard: { step: 1, microBatch: 0, examples: 16, sqNorms: { values: [1, 2] } } }],
      ['NaN', { shard: { step: 1, microBatch: 0, examples: 16, sqNorms: { values: [1, Number.NaN, 2] } } }],
      ['Infinity', { shard: { step: 1, microBatch: 0, examples: 16, sqNorms: { values: [Infinity, 1, 2] } } }],
      ['negative', { shard: { step: 1, microBatch: 0, examples: 16, sqNorms: { values: [1, -1, 2] } } }],
      ['zero examples', { shard: { step: 1, microBatch: 0, examples: 0, sqNorms: { values: [1, 1, 2] } } }],
      ['step regression', { shard: { step: 0, microBatch: 0, examples: 16, sqNorms: { values: [1, 1, 2] } } }],
      ['sketch payload', { shard: { step: 1, microBatch: 0, examples: 16, layer: 2, sketch: { seed: 1, size: 2, data: Buffer.alloc(8) } } }],
      ['empty message', {}],
    ];
    for (const [, message] of bad) rank.send(message);
    // Step 1 is still accepted after all that, with one duplicate shard refused.
    const [first, ...rest] = accumulationStep(1, MICRO, ACCUMULATED);
    rank.send(first!);
    rank.send(first!);
    for (const m of rest) rank.send(m);
    rank.send(accumulationStep(1, MICRO, ACCUMULATED).at(-1)!); // duplicate step end
    // A step going backwards after step 1 ended.
    rank.send(accumulationStep(0, MICRO, ACCUMULATED).at(-1)!);
    // Missing shards: step 2 declares 4 micro-batches, sends 3 → refused, excluded.
    const step2 = accumulationStep(2, MICRO, ACCUMULATED);
    for (const m of [...step2.slice(0, 3), step2.at(-1)!]) rank.send(m);
    for (const m of accumulationStep(3, MICRO, ACCUMULATED)) rank.send(m);
    const accepted = await got;
    expect(accepted.map((s) => s.step)).toEqual([0, 1, 3]);
    await expect.poll(() => rank.refusals().length).toBe(12);
    const refusals = rank.refusals();
    expect(refusals.map((r) => r.code)).toEqual([
      status.INVALID_ARGUMENT,
      status.INVALID_ARGUMENT,
      status.INVALID_ARGUMENT,
      status.INVALID_ARGUMENT,
      status.INVALID_ARGUMENT,
      status.ALREADY_EXISTS, // step 0 already ended: a duplicate
      status.INVALID_ARGUMENT, // a sketch in a norms run
      status.INVALID_ARGUMENT,
      status.ALREADY_EXISTS,
      status.ALREADY_EXISTS,
      status.OUT_OF_RANGE,
      status.FAILED_PRECONDITION,
    ]);
    const messages = refusals.map((r) => r.message);
    expect(messages[0]).toMatch(/has 2 values; run 'test-run' declared 3 layers/);
    expect(messages[1]).toMatch(/sq_norms\[1\] \(layer 'fc1.bias'\) is NaN/);
    expect(messages[2]).toMatch(/is Infinity/);
    expect(messages[3]).toMatch(/negative/);
    expect(messages[4]).toMatch(/examples must be ≥ 1/);
    expect(messages[6]).toMatch(/a sketch shard, but run 'test-run' said mode norms in its Hello \(sketch shards need MODE_SKETCH\)/);
    expect(messages[7]).toMatch(/no kind set/);
    expect(messages[8]).toMatch(/micro-batch 0: already received/);
    expect(messages[9]).toMatch(/already ended step 1/);
    expect(messages[10]).toMatch(/goes backwards, rank 0 already ended step 1/);
    expect(messages[11]).toMatch(/declared 4 micro-batches but micro-batch shard\(s\) 3 never arrived/);
    expect(rank.status).toBeNull(); // the stream stayed open through all of it
    const health = await firstValueFrom(t.sidecar.health$.pipe(filter((h) => h.refused >= 12)));
    expect(health).toMatchObject({ stepsCompleted: 3, stepsIncomplete: 1 });
  });

  it('ends a stream that sends data before Hello', async () => {
    const rank = new RankStream(t.client);
    rank.send(accumulationStep(0, MICRO, ACCUMULATED)[0]!);
    await expect.poll(() => rank.status?.code).toBe(status.FAILED_PRECONDITION);
    expect(rank.status?.details).toMatch(/shard before Hello: send Hello first/);
  });

  it.each([
    ['a newer protocol', hello({ protocolVersion: 2 }), status.FAILED_PRECONDITION, /protocol version 2.*speaks 1/],
    ['an empty run name', hello({ run: '' }), status.INVALID_ARGUMENT, /run name is empty/],
    ['no layers', hello({ layers: [] }), status.INVALID_ARGUMENT, /no layers declared/],
    ['rank ≥ world size', hello({ rank: 2, worldSize: 2 }), status.INVALID_ARGUMENT, /rank 2 is not below world_size 2/],
    [
      'duplicate layer names',
      hello({ layers: [{ name: 'a', numel: 1 }, { name: 'a', numel: 2 }] }),
      status.INVALID_ARGUMENT,
      /layer name 'a' appears twice/,
    ],
  ])('refuses a Hello with %s', async (_what, message, code, details) => {
    const rank = new RankStream(t.client);
    rank.send(message);
    await expect.poll(() => rank.status?.code).toBe(code);
    expect(rank.status?.details).toMatch(details);
  });

  it('refuses a rank whose layers disagree with its run, and keeps the run', async () => {
    const first = new RankStream(t.client);
    first.send(hello({ worldSize: 2 }));
    await expect.poll(() => first.received.length).toBe(1);
    const second = new RankStream(t.client);
    second.send(hello({ worldSize: 2, rank: 1, layers: [{ name: 'other', numel: 3 }] }));
    await expect.poll(() => second.status?.code).toBe(status.FAILED_PRECONDITION);
    expect(second.status?.details).toMatch(/already attached with 3 layers; this rank declared 1/);
    expect(first.status).toBeNull();
  });
});

describe('Watch', () => {
  it('sends known runs and their latest step, then live steps', async () => {
    const rank = new RankStream(t.client);
    rank.send(hello());
    const got = steps(1);
    for (const m of accumulationStep(0, MICRO, ACCUMULATED)) rank.send(m);
    await got;
    const events: unknown[] = [];
    const call = t.client.Watch({ run: 'test-run' });
    call.on('data', (e) => events.push(e));
    call.on('error', () => {});
    await expect.poll(() => events.length).toBeGreaterThanOrEqual(2);
    for (const m of accumulationStep(1, MICRO, ACCUMULATED)) rank.send(m);
    await expect
      .poll(() => events.filter((e) => (e as { step?: { step: number } }).step?.step === 1).length)
      .toBe(1);
    expect(events[0]).toMatchObject({ runStarted: { run: 'test-run', layers: 3, source: 'SOURCE_ACCUMULATION' } });
    expect(events[1]).toMatchObject({ step: { run: 'test-run', step: 0, globalBatch: 64, levels: 2 } });
    // Each step once, though stats$ replays its latest value to new subscribers.
    expect(events.filter((e) => (e as { step?: unknown }).step).length).toBe(2);
    call.cancel();
  });

  it('answers NOT_FOUND for a run it has never seen', async () => {
    const call = t.client.Watch({ run: 'nope' });
    const error = await new Promise<{ code: number; details: string }>((resolve) => call.on('error', resolve));
    expect(error.code).toBe(status.NOT_FOUND);
    expect(error.details).toMatch(/unknown run 'nope'/);
  });
});

describe('hook sessions', () => {
  it('lets a new process reuse a run name (its steps restart), but not a reconnection', async () => {
    const got = steps(3);
    const first = new RankStream(t.client);
    first.send(hello({ session: 'a' }));
    for (const m of accumulationStep(0, MICRO, ACCUMULATED)) first.send(m);
    await expect.poll(() => first.received.length).toBe(1);
    first.end();
    // Reconnection of the same session: step 0 is still a duplicate.
    const again = new RankStream(t.client);
    again.send(hello({ session: 'a' }));
    for (const m of accumulationStep(0, MICRO, ACCUMULATED).slice(-1)) again.send(m);
    await expect.poll(() => again.refusals().length).toBe(1);
    expect(again.refusals()[0]?.code).toBe(status.ALREADY_EXISTS);
    again.end();
    // A new session (a new watch() in a new process): steps from 0 again.
    const second = new RankStream(t.client);
    second.send(hello({ session: 'b' }));
    for (const step of [0, 1]) for (const m of accumulationStep(step, MICRO, ACCUMULATED)) second.send(m);
    const all = await got;
    expect(all.map((s) => s.step)).toEqual([0, 0, 1]);
    expect(second.refusals()).toEqual([]);
  });
});
