// StepBundles (several steps' StepBundles in one message, as the hook coalesces them) over real gRPC: the sidecar
// says in its Welcome that it takes them, and makes of them exactly what it makes of the same bundles sent one
// message each — the same StepStats, the same refusals, the rest of the message kept; health counts wire messages.
import { firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';
import type { RankMessage } from '../../src/transport/generated/noisescope/v1/RankMessage.js';
import type { StepBundle } from '../../src/transport/generated/noisescope/v1/StepBundle.js';
import type { StepStats } from '../../src/types.js';
import { microGradients } from '../support/dense-gradients.js';
import { hello, LAYERS, normsStepOf, RankStream } from '../support/rank-client.js';
import { sidecarEachTest } from '../support/sidecar-each-test.js';

const SIZES = LAYERS.map((l) => l.numel);
const STEPS = 6;

/** Step `step` as one StepBundle (2 micro-batches of accumulation). */
function bundleOf(step: number): StepBundle {
  const messages = normsStepOf(step, microGradients(step + 1, 2, SIZES, { signal: 1, noise: 0.7 }));
  const end = messages.at(-1)?.stepEnd;
  if (!end) throw new Error('a step ends with its StepEnd');
  return { shards: messages.slice(0, -1).map((m) => m.shard ?? {}), end };
}

const comparable = (stats: readonly StepStats[]) => stats.map(({ run: _run, unixMs: _unixMs, ...rest }) => rest);

async function settled(...streams: RankStream[]): Promise<void> {
  for (const s of streams) s.end();
  await expect.poll(() => streams.every((s) => s.status !== null), { timeout: 10_000 }).toBe(true);
}

describe('StepBundles over gRPC', () => {
  const t = sidecarEachTest();
  const attached = () =>
    (['one-each', 'several'] as const).map((run) => {
      const s = new RankStream(t.client);
      s.send(hello({ run }));
      return s;
    }) as [RankStream, RankStream];

  it('are taken (the Welcome says so) and give the StepStats of their bundles sent one message each', async () => {
    const runs = { one: t.steps(STEPS, 'one-each'), several: t.steps(STEPS, 'several') };
    const [one, several] = attached();
    const bundles = Array.from({ length: STEPS }, (_, step) => bundleOf(step));
    bundles.forEach((bundle) => one.send({ bundle }));
    several.send({ bundles: { bundles: bundles.slice(0, 4) } });
    several.send({ bundles: { bundles: bundles.slice(4) } });
    const [a, b] = [await runs.one, await runs.several];
    expect(b.map((s) => s.step)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(comparable(b)).toEqual(comparable(a));
    await settled(one, several);
    expect(several.received[0]?.welcome?.takesBundles).toBe(true);
    expect([one.refusals(), several.refusals()]).toEqual([[], []]);
    // Per run a Hello and its steps: 6 messages one way, 2 the other.
    await expect.poll(async () => (await firstValueFrom(t.sidecar.health$)).messages).toBe(1 + 6 + 1 + 2);
  });

  it('refuse a bad part by its place and keep the steps around it, and what came after them', async () => {
    const runs = { one: t.steps(STEPS - 1, 'one-each'), several: t.steps(STEPS - 1, 'several') };
    const [one, several] = attached();
    const bundles = Array.from({ length: STEPS }, (_, step) => bundleOf(step));
    const bad = bundles[2]!;
    bundles[2] = { ...bad, shards: [bad.shards![0]!, { ...bad.shards![1], sqNorms: { values: [1, Number.NaN, 1] } }] };
    bundles.forEach((bundle) => one.send({ bundle }));
    several.send({ bundles: { bundles: bundles.slice(0, 3) } });
    several.send({ bundle: bundles[3]! } satisfies RankMessage); // a single bundle between two groups, in order
    several.send({ bundles: { bundles: bundles.slice(4) } });
    const [a, b] = [await runs.one, await runs.several];
    await settled(one, several);
    expect(b.map((s) => s.step)).toEqual([0, 1, 3, 4, 5]);
    expect(comparable(b)).toEqual(comparable(a));
    expect(several.refusals()).toEqual(one.refusals());
    expect(several.refusals().map((r) => r.step)).toEqual([2, 2]);
  });

  it('refuse each of 300,000 empty bundles in one message, keeping the stream and the step after it', async () => {
    const stats = t.steps(1, 'several');
    const [, several] = attached();
    const empties: StepBundle[] = Array.from({ length: 300_000 }, () => ({}));
    several.send({ bundles: { bundles: empties } });
    several.send({ bundles: { bundles: [bundleOf(0)] } });
    expect((await stats).map((s) => s.step)).toEqual([0]);
    await settled(several);
    expect(several.status?.code).toBe(0);
    const refusals = several.refusals();
    expect(refusals.length).toBeGreaterThan(0);
    expect(refusals[0]!.message).toBe('bundle without an end (step 0): a StepBundle must carry its StepEnd');
  });
});
