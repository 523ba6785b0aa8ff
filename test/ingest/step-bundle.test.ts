// A StepBundle (a step's norms shards and its StepEnd in one message) over real gRPC: the sidecar must make of it
// exactly what it makes of the same messages sent one by one — the same StepStats, the same refusals (each naming
// the part of the bundle it is about), nothing else lost.
import { firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';
import type { RankMessage } from '../../src/transport/generated/noisescope/v1/RankMessage.js';
import type { StepStats } from '../../src/types.js';
import { microGradients } from '../support/dense-gradients.js';
import { hello, LAYERS, normsStepOf, RankStream } from '../support/rank-client.js';
import { sidecarEachTest } from '../support/sidecar-each-test.js';

const SIZES = LAYERS.map((l) => l.numel);
const STEPS = 6;

/** The same step as one message: its shards (in order) and its StepEnd. */
function bundled(messages: readonly RankMessage[]): RankMessage {
  const end = messages.at(-1)?.stepEnd;
  if (!end) throw new Error('a step ends with its StepEnd');
  return { bundle: { shards: messages.slice(0, -1).map((m) => m.shard ?? {}), end } };
}

/** Steps 0–2: 3 micro-batches of accumulation; later steps one micro-batch with per-example sums. */
function stepMessages(step: number): RankMessage[] {
  const k = step < 3 ? 3 : 1;
  const messages = normsStepOf(step, microGradients(step + 1, k, SIZES, { signal: 1, noise: 0.7 }));
  if (k > 1) return messages;
  // Per-example sums at 0.25·|h|² each: 16 × 0.25 ≥ 1, as Cauchy–Schwarz requires; a different scale per layer.
  const shard = messages[0]!.shard!;
  const sums = (shard.sqNorms?.values ?? []).map((v, l) => Number(v) * (0.25 + 0.1 * l));
  return [{ shard: { ...shard, perExample: { sums } } }, messages[1]!];
}

/** StepStats without what differs between two runs sent the same data (their name, their arrival time). */
const comparable = (stats: readonly StepStats[]) => stats.map(({ run: _run, unixMs: _unixMs, ...rest }) => rest);

async function settled(...streams: RankStream[]): Promise<void> {
  for (const s of streams) s.end();
  await expect.poll(() => streams.every((s) => s.status !== null), { timeout: 10_000 }).toBe(true);
}

describe('a StepBundle over gRPC', () => {
  const t = sidecarEachTest();
  /** Two rank streams, of runs 'separate' and 'bundled'. */
  const attached = () =>
    (['separate', 'bundled'] as const).map((run) => {
      const s = new RankStream(t.client);
      s.send(hello({ run }));
      return s;
    }) as [RankStream, RankStream];

  it('gives the StepStats of the same shards and StepEnd sent one by one (accumulation and per-example steps)', async () => {
    const runs = { separate: t.steps(STEPS, 'separate'), bundled: t.steps(STEPS, 'bundled') };
    const [separate, bundle] = attached();
    for (let step = 0; step < STEPS; step++) {
      const messages = stepMessages(step);
      messages.forEach((m) => separate.send(m));
      bundle.send(bundled(messages));
    }
    const [one, other] = [await runs.separate, await runs.bundled];
    expect(one.map((s) => s.source)).toEqual(['accumulation', 'accumulation', 'accumulation', 'per-example', 'per-example', 'per-example']);
    expect(comparable(other)).toEqual(comparable(one));
    expect(one.at(-1)?.smoothed?.bSimple).toBeGreaterThan(0);
    await settled(separate, bundle);
    expect([separate.refusals(), bundle.refusals()]).toEqual([[], []]);
    // Health counts wire messages, as the hook does: per run a Hello and 6 steps, each 4 or 2 messages or 1 bundle.
    await expect.poll(async () => (await firstValueFrom(t.sidecar.health$)).messages).toBe(1 + 12 + 6 + 1 + 6);
  });

  it('refuses a bad shard inside a bundle by its place, and handles the rest of the step as separate messages would', async () => {
    const runs = { separate: t.steps(STEPS - 1, 'separate'), bundled: t.steps(STEPS - 1, 'bundled') };
    const [separate, bundle] = attached();
    for (let step = 0; step < STEPS; step++) {
      const messages = stepMessages(step);
      // Step 1: micro-batch 1's second layer is NaN. Step 4 goes as separate messages on both streams (old style, still accepted).
      if (step === 1) messages[1] = { shard: { ...messages[1]!.shard, sqNorms: { values: [1, Number.NaN, 1] } } };
      messages.forEach((m) => separate.send(m));
      if (step === 4) messages.forEach((m) => bundle.send(m));
      else bundle.send(bundled(messages));
    }
    const [one, other] = [await runs.separate, await runs.bundled];
    await settled(separate, bundle);
    expect(comparable(other)).toEqual(comparable(one));
    // Step 1 is excluded (a shard missing), both ways; every other step is measured.
    expect(one.map((s) => s.step)).toEqual([0, 2, 3, 4, 5]);
    const refusals = separate.refusals();
    expect(refusals.map((r) => r.step)).toEqual([1, 1]);
    expect(refusals[0]!.message).toMatch(/NaN/);
    expect(bundle.refusals()).toEqual([
      { ...refusals[0]!, message: `bundle shards[1] (step 1 micro-batch 1): ${refusals[0]!.message}` },
      { ...refusals[1]!, message: `bundle end: ${refusals[1]!.message}` },
    ]);
  });

  it('refuses a bundle without its StepEnd, keeping the stream and the steps after it', async () => {
    const stats = t.steps(2, 'bundled');
    const s = new RankStream(t.client);
    s.send(hello({ run: 'bundled' }));
    const [first, ...rest] = [0, 1, 2].map((step) => bundled(stepMessages(step)));
    s.send({ bundle: { shards: first!.bundle!.shards ?? [] } });
    rest.forEach((m) => s.send(m));
    expect((await stats).map((x) => x.step)).toEqual([1, 2]);
    await settled(s);
    expect(s.refusals().map((r) => [r.step, r.message])).toEqual([[0, 'bundle without an end (step 0): a StepBundle must carry its StepEnd']]);
  });
});
