// End to end: a real sidecar with a run log, a raw gRPC rank driving steps,
// then the log read back from disk.
import { readdir } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { startSidecar, type Recommendation } from '../../src/index.js';
import { readRunLog } from '../../src/runlog/read-run-log.js';
import { runLogFileName } from '../../src/runlog/run-log-file-name.js';
import { connect, RankStream } from '../support/rank-client.js';
import { SyntheticRun } from '../support/synthetic-run.js';
import { afterEachTest } from './fixtures.js';

const { later, scratch } = afterEachTest();

const STEPS = 30;

describe('a sidecar with a run log', () => {
  it('logs the run, every step in order, each recommendation and the end, from real gRPC', async () => {
    const dir = await scratch();
    const sidecar = await startSidecar({ port: 0, policy: { window: 3 }, runLog: { dir } });
    later(() => sidecar.close());
    const made: Recommendation[] = [];
    const seen = sidecar.recommendations$.subscribe((r) => made.push(r));
    later(() => seen.unsubscribe());
    let lastStep = -1;
    const steps = sidecar.stats$.subscribe((s) => (lastStep = s.step));
    later(() => steps.unsubscribe());
    const client = connect(sidecar.address);
    later(() => client.close());

    // B_simple far above the batch of 32: the advice is to increase it.
    const run = new SyntheticRun({ run: 'logged/run 1', bSimple: 400, microExamples: [[16, 16]], seed: 5 });
    const rank = new RankStream(client);
    rank.send(run.hello(0));
    for (let step = 0; step < STEPS; step++) for (const m of run.messages(step, 0)) rank.send(m);
    await expect.poll(() => lastStep, { timeout: 10_000 }).toBe(STEPS - 1);
    rank.send({ goodbye: { dropped: 0 } });
    rank.end();
    await expect.poll(() => rank.status, { timeout: 10_000 }).not.toBeNull();
    await sidecar.close(); // flushes the log

    expect(await readdir(dir)).toEqual([runLogFileName('logged/run 1')]);
    const log = await readRunLog(`${dir}/${runLogFileName('logged/run 1')}`);
    expect(log.torn).toEqual([]);
    const types = log.records.map((r) => r.type);
    expect(types[0]).toBe('run');
    expect(types.at(-1)).toBe('run-ended');
    expect(log.records[0]).toMatchObject({ info: { run: 'logged/run 1', worldSize: 1, optimizer: 'SGD', ended: false } });
    expect(log.records.at(-1)).toMatchObject({ info: { run: 'logged/run 1', ended: true } });
    const loggedSteps = log.records.flatMap((r) => (r.type === 'step' ? [r.stats.step] : []));
    expect(loggedSteps).toEqual(Array.from({ length: STEPS }, (_, i) => i));
    // Each recommendation, as recommendations$ emitted it, after the step it was made at.
    expect(made.length).toBeGreaterThan(0);
    const logged = log.records.flatMap((r) => (r.type === 'recommendation' ? [r.recommendation] : []));
    expect(logged).toEqual(made);
    for (const r of made) {
      const at = log.records.findIndex((x) => x.type === 'recommendation' && x.recommendation.sequence === r.sequence);
      const stepAt = log.records.findIndex((x) => x.type === 'step' && x.stats.step === r.step);
      expect(at).toBeGreaterThan(stepAt);
    }
    expect(log.records.some((r) => r.type === 'layers')).toBe(true);
  });

  it('writes nothing anywhere unless asked to, even with a log directory in the environment', async () => {
    const dir = await scratch();
    const saved = { ...process.env };
    later(() => (process.env = saved));
    Object.assign(process.env, { NOISESCOPE_LOG_DIR: dir, XDG_DATA_HOME: dir, HOME: dir });
    const sidecar = await startSidecar({ port: 0 });
    later(() => sidecar.close());
    const client = connect(sidecar.address);
    later(() => client.close());
    let stepped = false;
    const steps = sidecar.stats$.subscribe(() => (stepped = true));
    later(() => steps.unsubscribe());
    const run = new SyntheticRun({ run: 'unlogged', bSimple: 40, microExamples: [[16, 16]], seed: 6 });
    const rank = new RankStream(client);
    rank.send(run.hello(0));
    for (const m of run.messages(0, 0)) rank.send(m);
    await expect.poll(() => stepped, { timeout: 10_000 }).toBe(true);
    await sidecar.close();
    expect(await readdir(dir)).toEqual([]);
  });
});
