import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { accumulationStep, connect, hello, RankStream } from '../support/rank-client.js';

// The built CLI, as a user runs it (npm test builds dist/ first).
const CLI = join(import.meta.dirname, '..', '..', 'dist', 'src', 'cli.js');

const running: ChildProcessWithoutNullStreams[] = [];
afterEach(() => {
  for (const child of running.splice(0)) child.kill('SIGTERM');
});

function start(args: string[]) {
  const child = spawn(process.execPath, [CLI, ...args]);
  running.push(child);
  const lines: string[] = [];
  createInterface({ input: child.stdout }).on('line', (line) => lines.push(line));
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exit = new Promise<number | null>((resolve) => child.on('exit', resolve));
  return { child, lines, stderr: () => stderr, exit };
}

describe('noisescope serve', () => {
  it('prints NDJSON with --json: listening, the run, one step line per measured step', async () => {
    const serve = start(['serve', '--port', '0', '--json']);
    await expect.poll(() => serve.lines.length, { timeout: 10_000 }).toBeGreaterThan(0);
    const listening = JSON.parse(serve.lines[0]!);
    expect(listening).toMatchObject({ type: 'listening', address: expect.stringMatching(/^127\.0\.0\.1:\d+$/) });

    const client = connect(listening.address);
    const rank = new RankStream(client);
    rank.send(hello({ run: 'cli-run' }));
    for (const step of [0, 1]) {
      for (const m of accumulationStep(step, [[4, 1, 2], [5, 1, 2]], [16, 3.5, 7])) rank.send(m);
    }
    const events = () => serve.lines.map((l) => JSON.parse(l) as { type: string; [k: string]: unknown });
    await expect.poll(() => events().filter((e) => e.type === 'step').length, { timeout: 10_000 }).toBe(2);
    const steps = events().filter((e) => e.type === 'step');
    expect(steps[1]).toMatchObject({ run: 'cli-run', step: 1, source: 'accumulation', globalBatch: 32, levels: 2 });
    expect(events().some((e) => e.type === 'run' && e.run === 'cli-run')).toBe(true);
    rank.end();
    client.close();
    serve.child.kill('SIGTERM');
    expect(await serve.exit).toBe(0);
  });

  it('prints one readable line per step without --json', async () => {
    const serve = start(['serve', '--port', '0']);
    await expect.poll(() => serve.lines.length, { timeout: 10_000 }).toBeGreaterThan(0);
    const address = serve.lines[0]!.replace('noisescope listening on ', '');
    const client = connect(address);
    const rank = new RankStream(client);
    rank.send(hello({ run: 'plain-run' }));
    for (const m of accumulationStep(0, [[4, 1, 2], [5, 1, 2]], [16, 3.5, 7])) rank.send(m);
    await expect.poll(() => serve.lines.find((l) => l.startsWith('plain-run step 0')), { timeout: 10_000 }).toBeTruthy();
    expect(serve.lines.find((l) => l.startsWith('plain-run step 0'))).toMatch(/B 32 \(2 micro\)\s+B_simple \S+/);
    expect(serve.lines.find((l) => l.startsWith('run plain-run'))).toMatch(/3 layers, 9,600 parameters/);
    rank.end();
    client.close();
  });

  it.each([
    [['serve', '--port', 'abc'], /--port must be a number, got 'abc'/],
    [['serve', '--port', '70000'], /--port must be 0..65535/],
    [['serve', '--beta', '1.5'], /beta/],
    [['serve', '--bogus'], /Unknown option '--bogus'/],
    [['frobnicate'], /unknown command 'frobnicate'/],
  ])('rejects %j with a clear message and exit code 2', async (args, message) => {
    const run = start(args);
    expect(await run.exit).toBe(2);
    expect(run.stderr()).toMatch(message);
  });

  it('refuses to listen beyond loopback without a token', async () => {
    const run = start(['serve', '--host', '0.0.0.0', '--port', '0']);
    expect(await run.exit).toBe(1);
    expect(run.stderr()).toMatch(/refusing to listen on 0.0.0.0/);
  });
});
