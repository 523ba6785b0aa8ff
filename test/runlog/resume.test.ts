// A sidecar restarted mid-run resumes the run from its log: the same smoothed
// estimates, step counts, temperature regimes and advice as a sidecar that never
// stopped, and no step logged twice. Real sidecars, real gRPC.
import { appendFile, copyFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startSidecar, type Sidecar } from '../../src/index.js';
import { parseRunLog, readRunLog } from '../../src/runlog/read-run-log.js';
import { resumeRunFromLog } from '../../src/runlog/resume-run.js';
import { RunResumer } from '../../src/runlog/run-resumer.js';
import { DEFAULT_BATCH_POLICY } from '../../src/recommend/batch-policy.js';
import { DEFAULT_SMOOTHING } from '../../src/stats/smoothing-options.js';
import { runLogFileName } from '../../src/runlog/run-log-file-name.js';
import type { RunResumeReport } from '../../src/runlog/run-resumer.js';
import type { LayerStats, Recommendation, StepStats } from '../../src/types.js';
import type { RankMessage } from '../../src/transport/generated/noisescope/v1/RankMessage.js';
import { connect, RankStream } from '../support/rank-client.js';
import { SyntheticRun } from '../support/synthetic-run.js';
import { afterEachTest, runInfo, stepStats } from './fixtures.js';

const { later, scratch } = afterEachTest();

const RUN = 'resume-me';
const STEPS = 60;
const KILLED_AFTER = 35;
// The learning rate drops tenfold at step 6: a temperature change restarts the smoothing before the "crash".
const lrAt = (step: number) => (step < 6 ? 0.1 : 0.01);

interface Seen {
  readonly stats: StepStats[];
  readonly layers: LayerStats[];
  readonly advice: Recommendation[];
}

function record(sidecar: Sidecar): Seen {
  const seen: Seen = { stats: [], layers: [], advice: [] };
  const subs = [
    sidecar.stats$.subscribe((s) => seen.stats.push(s)),
    sidecar.layers$.subscribe((l) => seen.layers.push(l)),
    sidecar.recommendations$.subscribe((r) => seen.advice.push(r)),
  ];
  later(() => subs.forEach((s) => s.unsubscribe()));
  return seen;
}

/** One rank (a fresh Attach stream, as a hook reconnecting opens) sends these steps of the seeded run. */
async function drive(sidecar: Sidecar, seen: Seen, steps: readonly number[]): Promise<void> {
  const run = new SyntheticRun({ run: RUN, bSimple: 120, microExamples: [[16, 16]], seed: 11 });
  const client = connect(sidecar.address);
  later(() => client.close());
  const rank = new RankStream(client);
  later(() => rank.end());
  rank.send(run.hello(0));
  for (const step of steps) for (const m of run.messages(step, 0)) rank.send(withLr(m, lrAt(step)));
  const last = steps.at(-1)!;
  await expect.poll(() => seen.stats.at(-1)?.step, { timeout: 15_000 }).toBe(last);
}

function withLr(message: RankMessage, lr: number): RankMessage {
  return message.stepEnd ? { stepEnd: { ...message.stepEnd, lr } } : message;
}

const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);
const withoutTime = <T extends { unixMs: number }>(x: T) => ({ ...x, unixMs: 0 });

describe('a restarted sidecar resuming a run from its log', () => {
  it('continues the smoothing, regimes, step count and advice exactly where the log ends, logging no step twice', async () => {
    // The same run through a sidecar that never stops.
    const reference = await startSidecar({ port: 0, smoothing: { beta: 0.9 }, policy: { window: 3 } });
    later(() => reference.close());
    const uninterrupted = record(reference);
    await drive(reference, uninterrupted, range(0, STEPS));

    // A logging sidecar that dies after step 25: its log as the crash left it, with a torn last line.
    const before = await scratch();
    const first = await startSidecar({ port: 0, smoothing: { beta: 0.9 }, policy: { window: 3 }, runLog: { dir: before, layersEvery: 1 } });
    later(() => first.close());
    await drive(first, record(first), range(0, KILLED_AFTER + 1));
    const file = runLogFileName(RUN);
    await expect
      .poll(async () => (await readRunLog(join(before, file)).catch(() => null))?.records.some((r) => r.type === 'step' && r.stats.step === KILLED_AFTER), { timeout: 10_000 })
      .toBe(true);
    const dir = await scratch();
    await copyFile(join(before, file), join(dir, file));
    await appendFile(join(dir, file), '{"v":1,"type":"step","unixMs":17000000');

    // The restarted sidecar; the hook re-attaches and sends the steps it takes from now on.
    const resumed: RunResumeReport[] = [];
    const second = await startSidecar({ port: 0, smoothing: { beta: 0.9 }, policy: { window: 3 }, runLog: { dir, onResume: (r) => resumed.push(r) } });
    later(() => second.close());
    const after = record(second);
    await drive(second, after, range(KILLED_AFTER + 1, STEPS));

    expect(resumed).toEqual([
      expect.objectContaining({ run: RUN, path: join(dir, file), lastStep: KILLED_AFTER, stepsMeasured: KILLED_AFTER + 1, tornLines: 1 }),
    ]);
    expect(resumed[0]!.message).toMatch(new RegExp(`^resumed run ${RUN} from .+ at step ${KILLED_AFTER} \\(36 steps measured; 1 torn line skipped\\)$`));
    expect(after.stats.map((s) => s.step)).toEqual(range(KILLED_AFTER + 1, STEPS));
    const expected = uninterrupted.stats.filter((s) => s.step > KILLED_AFTER);
    expect(after.stats[0]!.note).toMatch(new RegExp(`^resumed run ${RUN} from .+ at step ${KILLED_AFTER}`));
    expect(after.stats.map((s) => withoutTime({ ...s, note: null }))).toEqual(expected.map((s) => withoutTime({ ...s, note: null })));
    expect(after.stats.slice(1).map((s) => s.note)).toEqual(expected.slice(1).map((s) => s.note));
    expect(expected.at(-1)!.regimeStartStep).toBe(6); // the restart before the crash was replayed, not repeated
    // Per-layer means continue from the last layers record (here written every step).
    expect(after.layers).toEqual(uninterrupted.layers.filter((l) => l.step > KILLED_AFTER));
    // The policy's evidence and sequence carried over: the same advice at the same steps, none repeated.
    // (Advice was given before the crash; a fresh policy would give it again a window later.)
    expect(uninterrupted.advice.filter((r) => r.step <= KILLED_AFTER)).not.toEqual([]);
    expect(after.advice.map(withoutTime)).toEqual(uninterrupted.advice.filter((r) => r.step > KILLED_AFTER).map(withoutTime));

    await second.close();
    const log = await readRunLog(join(dir, file));
    expect(log.torn).toEqual([expect.objectContaining({ last: false })]); // ended with a newline by the writer, not fatal
    const loggedSteps = log.records.flatMap((r) => (r.type === 'step' ? [r.stats.step] : []));
    expect(loggedSteps).toEqual(range(0, STEPS));
  });

  it('resumes the last stretch of increasing steps after the last run-ended record', () => {
    const line = (type: string, payload: object) => JSON.stringify({ v: 1, type, unixMs: 1, ...payload });
    const run = (ended = false) => line(ended ? 'run-ended' : 'run', { info: runInfo(RUN, { ended }) });
    const step = (n: number) => line('step', { stats: stepStats(RUN, n) });
    const ended = parseRunLog([run(), step(0), step(1), run(true)].join('\n'), 'a.ndjson');
    expect(resumeRunFromLog(ended)).toBeNull();
    expect(resumeRunFromLog(parseRunLog(run(), 'b.ndjson'))).toBeNull();
    // Run again under the same name after it ended, then a crash: the new part resumes.
    const again = parseRunLog([run(), step(0), run(true), run(), step(5), step(6)].join('\n'), 'c.ndjson');
    const resumed = resumeRunFromLog(again)!;
    expect([resumed.lastStep, resumed.stepsMeasured, resumed.message]).toEqual([6, 7, `resumed run ${RUN} from c.ndjson at step 6`]);
    // A training that began anew under the same name without ending (steps going back): only its own steps count.
    const anew = resumeRunFromLog(parseRunLog([run(), step(5), step(6), step(2), step(3)].join('\n'), 'd.ndjson'))!;
    expect([anew.lastStep, anew.stepsMeasured]).toEqual([3, 4]);
    // Other layers than the logged run's: another model, nothing to continue.
    expect(resumed.estimation([{ name: 'other', numel: 3, kind: 'Linear' }])).toBeNull();
    expect(resumed.estimation(runInfo(RUN).layers)).toMatchObject({ lastStep: 6, measured: 7 });
  });

  it('starts afresh, saying why, a new training under the name of an unfinished logged run', async () => {
    const dir = await scratch();
    const first = await startSidecar({ port: 0, runLog: { dir, layersEvery: 1 } });
    later(() => first.close());
    await drive(first, record(first), range(0, 12));
    const file = join(dir, runLogFileName(RUN));
    await expect.poll(async () => (await readRunLog(file).catch(() => null))?.records.filter((r) => r.type === 'step').length, { timeout: 10_000 }).toBe(12);
    const crashed = await scratch();
    await copyFile(file, join(crashed, runLogFileName(RUN)));

    const notices: string[] = [];
    const resumed: RunResumeReport[] = [];
    const second = await startSidecar({ port: 0, runLog: { dir: crashed, onResume: (r) => resumed.push(r), onError: (f) => notices.push(f.message) } });
    later(() => second.close());
    const seen = record(second);
    await drive(second, seen, range(0, 3)); // the training itself restarted: step 0 again
    expect(resumed).toEqual([]);
    expect(notices).toEqual([
      `not resuming run '${RUN}' from its log (estimating it afresh): it starts again at step 0, and its log, which never saw it end, reached step 11: a new training under the same name`,
    ]);
    expect(seen.stats.map((s) => [s.step, s.stepsMeasured])).toEqual([[0, 1], [1, 2], [2, 3]]);
    await second.close();
    // Its log goes on in the same file; resuming it later would take the new training's steps only.
    const log = await readRunLog(join(crashed, runLogFileName(RUN)));
    expect(resumeRunFromLog(log)).toMatchObject({ lastStep: 2, stepsMeasured: 3 });
  });

  it('reads a log larger than its read chunk, a character split between two chunks intact', async () => {
    const dir = await scratch();
    const run = `sigma-${'Σ'.repeat(300)}`; // two bytes each in UTF-8
    const line = (type: string, payload: object) => JSON.stringify({ v: 1, type, unixMs: 1, ...payload });
    const steps = Math.floor(((1 << 20) - 50_000) / Buffer.byteLength(line('step', { stats: stepStats(run, 0) })));
    const head = `${[line('run', { info: runInfo(run) }), ...range(0, steps).map((n) => line('step', { stats: stepStats(run, n) }))].join('\n')}\n`;
    const last = line('step', { stats: stepStats(run, steps) });
    // Pad the first line (JSON allows leading spaces) so that byte 2^20, where the second chunk begins, is the second byte of a Σ in the last line's run name.
    const splitAt = Buffer.from(last).indexOf(Buffer.from('Σ')) + 101;
    const padding = (1 << 20) - Buffer.byteLength(head) - splitAt;
    expect(padding).toBeGreaterThanOrEqual(0);
    const text = `${' '.repeat(padding)}${head}${last}\n`;
    expect(Buffer.from(text)[1 << 20]! >> 6).toBe(0b10); // a UTF-8 continuation byte
    const file = join(dir, 'big.ndjson');
    await writeFile(file, text);
    const reports: RunResumeReport[] = [];
    const errors: unknown[] = [];
    const resumer = new RunResumer(() => file, DEFAULT_SMOOTHING, DEFAULT_BATCH_POLICY, (r) => reports.push(r), (_run, _path, e) => errors.push(e));
    // The run's name is checked against the last record's: a mangled character would refuse it.
    expect(resumer.estimation(run, runInfo(run).layers, steps + 1)).toMatchObject({ lastStep: steps });
    expect(errors).toEqual([]);
    expect(reports).toEqual([expect.objectContaining({ run, lastStep: steps, tornLines: 0 })]);
  });

  it('starts the run afresh with resume: false', async () => {
    const dir = await scratch();
    const line = (type: string, payload: object) => JSON.stringify({ v: 1, type, unixMs: 1, ...payload });
    await writeFile(join(dir, runLogFileName(RUN)), `${[line('run', { info: runInfo(RUN) }), line('step', { stats: stepStats(RUN, 4) })].join('\n')}\n`);
    const resumed: RunResumeReport[] = [];
    const sidecar = await startSidecar({ port: 0, runLog: { dir, resume: false, onResume: (r) => resumed.push(r) } });
    later(() => sidecar.close());
    const seen = record(sidecar);
    await drive(sidecar, seen, range(2, 5));
    expect(seen.stats.map((s) => s.stepsMeasured)).toEqual([1, 2, 3]);
    expect(resumed).toEqual([]);
  });
});
