// Recommendations delivered from a real sidecar: to the ranks of their run over
// Attach, to watchers over Watch, each one equal field by field to recommendations$.
import { status } from '@grpc/grpc-js';
import type { Subscription } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { startSidecar, type Recommendation, type Sidecar } from '../../src/index.js';
import { recommendationFromWire } from '../../src/remote/from-wire.js';
import type { NoiseScopeClient } from '../../src/transport/generated/noisescope/v1/NoiseScope.js';
import type { RunEvent__Output } from '../../src/transport/generated/noisescope/v1/RunEvent.js';
import { connect, RankStream } from '../support/rank-client.js';
import { SyntheticRun } from '../support/synthetic-run.js';

// B_simple far above the batch of 64 (advice: increase), and far below it (decrease).
const WIDE = { run: 'wide', bSimple: 400, microExamples: [[16, 16], [16, 16]], seed: 11 };
const NARROW = { run: 'narrow', bSimple: 4, microExamples: [[16, 16, 16, 16]], seed: 12 };
const STEPS = 40;
const POLICY = { window: 3 };

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

async function start() {
  const sidecar = await startSidecar({ port: 0, policy: POLICY });
  cleanup.push(() => sidecar.close());
  const client = connect(sidecar.address);
  cleanup.push(() => client.close());
  const made: Recommendation[] = [];
  const lastStep = new Map<string, number>();
  const subscriptions: Subscription[] = [
    sidecar.recommendations$.subscribe((r) => made.push(r)),
    sidecar.stats$.subscribe((s) => lastStep.set(s.run, s.step)),
  ];
  cleanup.push(() => subscriptions.forEach((s) => s.unsubscribe()));
  /** Until the sidecar has estimated (and advised on) every step of these runs. */
  const allStepsDone = (...runs: string[]) =>
    expect.poll(() => runs.every((run) => lastStep.get(run) === STEPS - 1), { timeout: 10_000 }).toBe(true);
  return { sidecar, client, made, allStepsDone };
}

function attach(client: NoiseScopeClient, run: SyntheticRun, rank: number): RankStream {
  const stream = new RankStream(client);
  stream.send(run.hello(rank));
  return stream;
}

const ofRun = (made: readonly Recommendation[], run: string) => made.filter((r) => r.run === run);

/** Both ranks of WIDE and the one rank of NARROW attach and send every step, interleaved. */
function trainBoth(client: NoiseScopeClient): { wideRanks: RankStream[]; narrowRank: RankStream } {
  const wide = new SyntheticRun(WIDE);
  const narrow = new SyntheticRun(NARROW);
  const wideRanks = [attach(client, wide, 0), attach(client, wide, 1)];
  const narrowRank = attach(client, narrow, 0);
  for (let step = 0; step < STEPS; step++) {
    for (const [rank, stream] of wideRanks.entries()) for (const m of wide.messages(step, rank)) stream.send(m);
    for (const m of narrow.messages(step, 0)) narrowRank.send(m);
  }
  return { wideRanks, narrowRank };
}

describe('recommendations over Attach', () => {
  it('reach every rank of their run, in order and field by field as on recommendations$, and no rank of another run', async () => {
    const { client, made, allStepsDone } = await start();
    const { wideRanks: ranks, narrowRank: other } = trainBoth(client);
    await allStepsDone('wide', 'narrow');
    expect(ofRun(made, 'wide').at(-1)).toMatchObject({ action: 'increase', currentGlobalBatch: 64 });
    expect(ofRun(made, 'narrow').at(-1)).toMatchObject({ action: 'decrease', currentGlobalBatch: 64 });

    for (const stream of ranks) {
      await expect.poll(() => stream.recommendations().length, { timeout: 10_000 }).toBe(ofRun(made, 'wide').length);
      expect(stream.recommendations().map(recommendationFromWire)).toEqual(ofRun(made, 'wide'));
    }
    await expect.poll(() => other.recommendations().length, { timeout: 10_000 }).toBe(ofRun(made, 'narrow').length);
    expect(other.recommendations().map(recommendationFromWire)).toEqual(ofRun(made, 'narrow'));
    for (const stream of [...ranks, other]) expect(stream.refusals()).toEqual([]);
  });

  it('gives a rank that was away when the recommendation was made the latest one right after its Welcome', async () => {
    const { sidecar, client, made, allStepsDone } = await start();
    const wide = new SyntheticRun(WIDE);
    const present = attach(client, wide, 0);
    // Rank 1 ends every step first, then leaves: each step completes (and is advised on) without it.
    const away = attach(client, wide, 1);
    for (let step = 0; step < STEPS; step++) for (const m of wide.messages(step, 1)) away.send(m);
    away.end();
    await expect.poll(() => away.status?.code, { timeout: 10_000 }).toBe(status.OK);
    const runs: { ranksConnected: number }[] = [];
    const s = sidecar.runs$.subscribe((all) => runs.push(...all.filter((r) => r.run === 'wide')));
    cleanup.push(() => s.unsubscribe());
    await expect.poll(() => runs.at(-1)?.ranksConnected).toBe(1);
    for (let step = 0; step < STEPS; step++) for (const m of wide.messages(step, 0)) present.send(m);
    await allStepsDone('wide');
    expect(made.at(-1)).toMatchObject({ run: 'wide', action: 'increase' });
    expect(away.recommendations()).toEqual([]);

    const back = attach(client, wide, 1);
    await expect.poll(() => back.received.length, { timeout: 10_000 }).toBe(2);
    expect(back.received[0]?.welcome).toMatchObject({ run: 'wide', rank: 1 });
    expect(recommendationFromWire(back.received[1]!.recommendation!)).toEqual(made.at(-1));
    // A new rank of another run gets nothing of this one.
    const stranger = attach(client, new SyntheticRun({ ...NARROW, run: 'stranger' }), 0);
    await expect.poll(() => stranger.received.length).toBe(1);
    expect(stranger.received[0]?.welcome).toMatchObject({ run: 'stranger' });
    expect(stranger.recommendations()).toEqual([]);
  });
});

describe('recommendations over Watch', () => {
  it('sends each new recommendation after its step, and each run’s latest to a new watcher after its run and step', async () => {
    const { client, made, allStepsDone } = await start();
    const live: RunEvent__Output[] = [];
    const liveCall = client.Watch({});
    liveCall.on('data', (e: RunEvent__Output) => live.push(e));
    liveCall.on('error', () => {});
    cleanup.push(() => liveCall.cancel());
    trainBoth(client);
    await allStepsDone('wide', 'narrow');
    expect(new Set(made.map((r) => r.run))).toEqual(new Set(['wide', 'narrow']));
    await expect.poll(() => live.filter((e) => e.step?.step === STEPS - 1).length, { timeout: 10_000 }).toBe(2);
    await expect.poll(() => live.filter((e) => e.recommendation).length).toBe(made.length);
    expect(live.flatMap((e) => (e.recommendation ? [recommendationFromWire(e.recommendation)] : []))).toEqual(made);
    // Each recommendation comes after the step it was made at.
    for (const r of made) {
      const at = live.findIndex((e) => e.recommendation?.run === r.run && e.recommendation.sequence === r.sequence);
      const stepAt = live.findIndex((e) => e.step?.run === r.run && e.step.step === r.step);
      expect(stepAt).toBeGreaterThanOrEqual(0);
      expect(stepAt).toBeLessThan(at);
    }

    const late: RunEvent__Output[] = [];
    const lateCall = client.Watch({ run: 'wide' });
    lateCall.on('data', (e: RunEvent__Output) => late.push(e));
    lateCall.on('error', () => {});
    cleanup.push(() => lateCall.cancel());
    await expect.poll(() => late.length).toBeGreaterThanOrEqual(3);
    expect(late[0]?.runStarted).toMatchObject({ run: 'wide' });
    expect(late[1]?.step).toMatchObject({ run: 'wide', step: STEPS - 1 });
    expect(recommendationFromWire(late[2]!.recommendation!)).toEqual(ofRun(made, 'wide').at(-1));
    // Once: recommendations$ replaying its latest value does not repeat it, and no other run's.
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(late.filter((e) => e.recommendation).length).toBe(1);
  });
});

describe('sidecar lifecycle with recommendations', () => {
  it('closes cleanly with ranks and watchers attached: streams end, recommendations$ completes', async () => {
    const { sidecar, client, made, allStepsDone } = await start();
    const wide = new SyntheticRun(WIDE);
    const ranks = [attach(client, wide, 0), attach(client, wide, 1)];
    const watch = client.Watch({});
    const watchStatus = new Promise<number>((resolve) => watch.on('status', (s: { code: number }) => resolve(s.code)));
    watch.on('data', () => {});
    watch.on('error', () => {});
    for (let step = 0; step < STEPS; step++) for (const [rank, stream] of ranks.entries()) for (const m of wide.messages(step, rank)) stream.send(m);
    await allStepsDone('wide');
    expect(made.length).toBeGreaterThan(0);
    let completed = false;
    sidecar.recommendations$.subscribe({ complete: () => (completed = true) });
    await sidecar.close();
    expect(completed).toBe(true);
    expect(await watchStatus).toBe(status.OK);
    for (const stream of ranks) await expect.poll(() => stream.status?.code).toBe(status.UNAVAILABLE);
  });

  it('rejects a bad policy at start, leaving its port free', async () => {
    const probe = await startSidecar({ port: 0 });
    const port = probe.port;
    await probe.close();
    await expect(startSidecar({ port, policy: { minBatch: 256, maxBatch: 64 } })).rejects.toThrow(/max batch 64 is below min batch 256/);
    await expect(startSidecar({ port, policy: { maxFactor: 1 } })).rejects.toThrow(/max factor per change must be a finite number above 1, got 1/);
    await expect(startSidecar({ port, policy: { window: 0 } })).rejects.toThrow(/window must be a whole number ≥ 1, got 0/);
    // The port was never taken.
    const ok = await startSidecar({ port });
    await ok.close();
  });
});
