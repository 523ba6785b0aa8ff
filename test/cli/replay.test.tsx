// `noisescope replay`: a run logged by a real sidecar, played back by the built CLI
// (--json and lines) and into the same Dashboard component the live sidecar feeds.
import { spawnSync } from 'node:child_process';
import { appendFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { render } from 'ink-testing-library';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { logProblems, replayRunLog } from '../../src/cli/replay.js';
import { ndjson } from '../../src/cli/format.js';
import { startSidecar, type Recommendation, type StepStats } from '../../src/index.js';
import { readRunLog } from '../../src/runlog/read-run-log.js';
import { runLogFileName } from '../../src/runlog/run-log-file-name.js';
import { Dashboard } from '../../tui/dashboard.js';
import { CLI } from '../support/cli-process.js';
import { connect, RankStream } from '../support/rank-client.js';
import { SyntheticRun } from '../support/synthetic-run.js';

const RUN = 'replayed';
const STEPS = 40;
let dir = '';
let path = '';
const live: { stats: StepStats[]; advice: Recommendation[] } = { stats: [], advice: [] };

// One finished run, logged by a real sidecar over real gRPC, then cut short mid-line as a crash would.
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'noisescope-replay-'));
  path = join(dir, runLogFileName(RUN));
  const sidecar = await startSidecar({ port: 0, smoothing: { beta: 0.9 }, policy: { window: 3 }, runLog: { dir } });
  const subs = [sidecar.stats$.subscribe((s) => live.stats.push(s)), sidecar.recommendations$.subscribe((r) => live.advice.push(r))];
  const client = connect(sidecar.address);
  const run = new SyntheticRun({ run: RUN, bSimple: 120, microExamples: [[16, 16]], seed: 3 });
  const rank = new RankStream(client);
  rank.send(run.hello(0));
  for (let step = 0; step < STEPS; step++) for (const m of run.messages(step, 0)) rank.send(m);
  rank.send({ goodbye: { dropped: 0 } });
  rank.end();
  await until(() => rank.status !== null && live.stats.length === STEPS);
  subs.forEach((s) => s.unsubscribe());
  client.close();
  await sidecar.close();
  await appendFile(path, '{"v":1,"type":"step","unixMs":1700000');
});
async function until(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`the logged run did not finish: ${live.stats.length} of ${STEPS} steps`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
afterAll(() => rm(dir, { recursive: true, force: true }));

function cli(...args: string[]) {
  const result = spawnSync(process.execPath, [CLI, 'replay', ...args], { encoding: 'utf8', env: { ...process.env, NOISESCOPE_LOG_DIR: dir } });
  return { code: result.status, lines: result.stdout.split('\n').filter(Boolean), stderr: result.stderr };
}

describe('noisescope replay', () => {
  it('--json prints the logged run as serve --json printed it live, reporting the torn last line without failing', () => {
    const { code, lines, stderr } = cli(path, '--json');
    expect(code).toBe(0);
    const events = lines.map((l) => JSON.parse(l) as { type: string });
    const steps = lines.filter((_, i) => events[i]!.type === 'step');
    expect(steps).toEqual(live.stats.map((s) => ndjson('step', s)));
    expect(live.advice.length).toBeGreaterThan(0);
    expect(lines.filter((_, i) => events[i]!.type === 'recommendation')).toEqual(live.advice.map((r) => ndjson('recommendation', r)));
    const runs = events.filter((e) => e.type === 'run');
    expect([runs[0], runs.at(-1)]).toEqual([expect.objectContaining({ run: RUN, ended: false }), expect.objectContaining({ run: RUN, ended: true })]);
    expect(events.some((e) => e.type === 'layers')).toBe(true);
    expect(stderr).toMatch(/replayed\.ndjson:\d+: torn last line \(\d+ bytes, a write cut short by a crash\) skipped/);
  });

  it('prints plain lines without a terminal, and refuses a missing file or a bad speed with a clear message', () => {
    const plain = cli(path, '--speed', '1000');
    expect(plain.code).toBe(0);
    expect(plain.lines[0]).toMatch(/^run replayed: 1 layers/);
    expect(plain.lines.filter((l) => l.startsWith(`${RUN} step `) && !l.includes('recommendation'))).toHaveLength(STEPS);
    const missing = cli(join(dir, 'nope.ndjson'));
    expect([missing.code, missing.stderr]).toEqual([2, expect.stringContaining(`no run log '${join(dir, 'nope.ndjson')}': neither a file nor a run logged in ${dir}`)]);
    // A run's name finds its log in the log directory (here $NOISESCOPE_LOG_DIR, as serve uses it).
    const byName = cli(RUN, '--json');
    expect([byName.code, byName.lines.filter((l) => l.startsWith('{"type":"step"')).length]).toEqual([0, STEPS]);
    expect(cli('other-run', '--log-dir', dir).stderr).toContain(`no run log 'other-run': neither a file nor a run logged in ${dir}`);
    const slow = cli(path, '--speed', '0');
    expect([slow.code, slow.stderr]).toEqual([2, expect.stringContaining("--speed must be a number > 0 (times the logged pace), got '0'")]);
    expect(cli().stderr).toContain('replay takes one run log file, got none');
  });

  it('plays into the same dashboard as a live sidecar', async () => {
    const played = replayRunLog(await readRunLog(path), { speed: null });
    const view = render(<Dashboard sources={played} columns={100} rows={30} updatesPerSecond={50} />);
    try {
      await played.done;
      await expect.poll(() => view.lastFrame() ?? '', { timeout: 5_000 }).toMatch(new RegExp(`${RUN}[\\s\\S]*step ${STEPS - 1}`));
      expect(view.lastFrame()).toContain('B_simple');
    } finally {
      view.unmount();
    }
  });

  it("keeps the log's clock: a run logged an hour ago, killed before it ended, was up as long as it ran", async () => {
    const hour = 3_600_000;
    const shifted = (await readFile(path, 'utf8'))
      .split('\n')
      .filter((l) => l.endsWith('}') && !l.includes('"type":"run-ended"'))
      .map((l) => JSON.stringify(JSON.parse(l, (key, v: unknown) => (/^(unixMs|startedUnixMs)$/.test(key) ? (v as number) - hour : v))));
    const aged = join(dir, 'aged.ndjson');
    await writeFile(aged, `${shifted.join('\n')}\n`);
    const log = await readRunLog(aged);
    const played = replayRunLog(log, { speed: 1000 });
    const view = render(<Dashboard sources={played} columns={200} rows={30} updatesPerSecond={50} replaySpeed={1000} />);
    try {
      await played.done;
      await expect.poll(() => view.lastFrame() ?? '', { timeout: 5_000 }).toContain(`Replay ${STEPS} steps played · 1000× the logged pace`);
      const started = log.records.find((r) => r.type === 'run')!.unixMs;
      expect(log.records.at(-1)!.unixMs - started).toBeLessThan(60_000); // the run itself took seconds
      expect(view.lastFrame()).toMatch(/ ranks 1\/1 .* up 0:\d\d /);
      expect(view.lastFrame()).not.toMatch(/msg\/s| lag /);
    } finally {
      view.unmount();
    }
  });

  it('plays into the dashboard in a real terminal (tmux, 80×24) until q', async () => {
    expect(spawnSync('tmux', ['-V']).status, 'tmux is missing: run `npm run setup`').toBe(0);
    const session = `noisescope-replay-${process.pid}`;
    const tmux = (...args: string[]) => spawnSync('tmux', args, { encoding: 'utf8' });
    const capture = () => tmux('capture-pane', '-p', '-t', session).stdout;
    try {
      // Ink draws no live frames when CI is set; a person's terminal has no CI.
      tmux('new-session', '-d', '-s', session, '-x', '80', '-y', '24', `env -u CI ${process.execPath} ${CLI} replay ${path} --speed 20`);
      await expect.poll(capture, { timeout: 15_000 }).toContain(`step ${STEPS - 1}`);
      const screen = capture();
      expect(screen).toContain(`noisescope ${RUN}`);
      expect(screen).toMatch(/●{5,}/); // the chart, from every replayed step
      expect(screen).toMatch(/Recommendation ▲ increase 32 → \d+/);
      expect(screen).toContain('replay of'); // where the live one names its compute backend
      // The log keeps no ingest counters and its steps were not just received: no rates, no lag.
      expect(screen).toContain(`Replay ${STEPS} steps played · 20× the logged pace`);
      expect(screen).not.toMatch(/msg\/s| lag /);
      tmux('send-keys', '-t', session, 'q');
      await expect.poll(() => tmux('has-session', '-t', session).status, { timeout: 10_000 }).not.toBe(0);
    } finally {
      tmux('kill-session', '-t', `=${session}`);
    }
  });

  it('reports steps logged twice or out of order, and log gaps', async () => {
    const line = (record: object) => `${JSON.stringify({ v: 1, unixMs: 1, ...record })}\n`;
    const log = await readRunLog(path);
    const step = log.records.find((r) => r.type === 'step')!;
    const bad = join(dir, 'bad.ndjson');
    await appendFile(bad, [step, step].map((r) => line(r)).join('') + line({ type: 'log-gap', run: RUN, dropped: 7, fromUnixMs: 1, toUnixMs: 2 }));
    expect(logProblems(await readRunLog(bad))).toEqual([
      `${bad}: run ${RUN} step 0 logged after step 0`,
      `${bad}: the writer dropped 7 lines of run ${RUN} (disk too slow)`,
    ]);
    expect(logProblems(log)).toEqual([expect.stringMatching(/torn last line/)]);
  });
});
