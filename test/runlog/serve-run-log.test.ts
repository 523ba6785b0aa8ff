// `noisescope serve` logs every run by default, where --log-dir or the environment says.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { readRunLog } from '../../src/runlog/read-run-log.js';
import { runLogFileName } from '../../src/runlog/run-log-file-name.js';
import { accumulationStep, connect, hello, RankStream } from '../support/rank-client.js';
import { afterEachTest } from './fixtures.js';

// The built CLI, as a user runs it (npm test builds dist/ first).
const CLI = join(import.meta.dirname, '..', '..', 'dist', 'src', 'cli.js');

const { later, scratch } = afterEachTest();

/** serve with its data directories pointed at `home`, so nothing reaches the real one. */
function serve(args: string[], home: string, env: Record<string, string> = {}) {
  const { NOISESCOPE_LOG_DIR: _, XDG_DATA_HOME: __, ...rest } = process.env;
  const child: ChildProcessWithoutNullStreams = spawn(process.execPath, [CLI, 'serve', '--port', '0', '--json', ...args], {
    env: { ...rest, HOME: home, CI: 'true', ...env },
  });
  later(() => child.kill('SIGTERM'));
  const lines: { type: string; [k: string]: unknown }[] = [];
  createInterface({ input: child.stdout }).on('line', (line) => lines.push(JSON.parse(line)));
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exit = new Promise<number | null>((resolve) => child.on('exit', resolve));
  return { child, lines, stderr: () => stderr, exit };
}

async function driveTwoSteps(address: string, run: string) {
  const client = connect(address);
  const rank = new RankStream(client);
  rank.send(hello({ run }));
  for (const step of [0, 1]) for (const m of accumulationStep(step, [[4, 1, 2], [5, 1, 2]], [16, 3.5, 7])) rank.send(m);
  return { client, rank };
}

describe('noisescope serve run log', () => {
  it('says where it logs (--log-dir), and the log holds the run and its steps after SIGTERM', async () => {
    const home = await scratch();
    const dir = join(home, 'my logs');
    const s = serve(['--log-dir', dir], home);
    await expect.poll(() => s.lines.length, { timeout: 10_000 }).toBeGreaterThan(1);
    expect(s.lines[1]).toEqual({ type: 'run-log', path: dir }); // once, right after listening
    const { client, rank } = await driveTwoSteps(s.lines[0]!.address as string, 'cli/logged');
    await expect.poll(() => s.lines.filter((l) => l.type === 'step').length, { timeout: 10_000 }).toBe(2);
    rank.end();
    client.close();
    s.child.kill('SIGTERM');
    expect(await s.exit).toBe(0);
    const log = await readRunLog(join(dir, runLogFileName('cli/logged')));
    expect(log.torn).toEqual([]);
    expect(log.records[0]).toMatchObject({ type: 'run', info: { run: 'cli/logged', worldSize: 1 } });
    expect(log.records.flatMap((r) => (r.type === 'step' ? [r.stats.step] : []))).toEqual([0, 1]);
    expect(log.records.at(-1)).toMatchObject({ type: 'run', info: { ranksConnected: 0 } }); // the rank left (no goodbye: not ended)
  });

  it('logs to $NOISESCOPE_LOG_DIR by default, else under $XDG_DATA_HOME', async () => {
    const home = await scratch();
    const a = serve([], home, { NOISESCOPE_LOG_DIR: join(home, 'env-dir') });
    const b = serve([], home, { XDG_DATA_HOME: join(home, 'xdg') });
    await expect.poll(() => a.lines.length > 1 && b.lines.length > 1, { timeout: 10_000 }).toBe(true);
    expect(a.lines[1]).toEqual({ type: 'run-log', path: join(home, 'env-dir') });
    expect(b.lines[1]).toEqual({ type: 'run-log', path: join(home, 'xdg', 'noisescope', 'runs') });
  });

  it('writes nothing with --no-log', async () => {
    const home = await scratch();
    const s = serve(['--no-log'], home, { NOISESCOPE_LOG_DIR: join(home, 'unused') });
    await expect.poll(() => s.lines.length, { timeout: 10_000 }).toBeGreaterThan(1);
    const { client, rank } = await driveTwoSteps(s.lines[0]!.address as string, 'unlogged');
    await expect.poll(() => s.lines.filter((l) => l.type === 'step').length, { timeout: 10_000 }).toBe(2);
    rank.end();
    client.close();
    s.child.kill('SIGTERM');
    expect(await s.exit).toBe(0);
    expect(s.lines.some((l) => l.type === 'run-log')).toBe(false);
    expect(await readdir(home)).toEqual([]);
  });

  it('keeps serving when the log cannot be written, saying why once on stderr', async () => {
    const home = await scratch();
    const s = serve(['--log-dir', '/dev/null/runs'], home);
    await expect.poll(() => s.lines.length, { timeout: 10_000 }).toBeGreaterThan(1);
    const { client, rank } = await driveTwoSteps(s.lines[0]!.address as string, 'unloggable');
    await expect.poll(() => s.lines.filter((l) => l.type === 'step').length, { timeout: 10_000 }).toBe(2);
    await expect.poll(() => s.stderr(), { timeout: 10_000 }).toMatch(/run log for 'unloggable' stopped: .*\/dev\/null\/runs/);
    rank.end();
    client.close();
    s.child.kill('SIGTERM');
    expect(await s.exit).toBe(0);
    expect(s.stderr().match(/run log for/g)).toHaveLength(1); // the rank leaving was not another failure
  });

  it.each([
    [['--no-log', '--log-dir', '/tmp/x'], /--no-log and --log-dir '\/tmp\/x' contradict each other/],
    [['--log-dir', ' '], /--log-dir must be a directory, got ' '/],
  ])('refuses %j with exit code 2', async (args, message) => {
    const s = serve(args, await scratch());
    expect(await s.exit).toBe(2);
    expect(s.stderr()).toMatch(message);
  });
});
