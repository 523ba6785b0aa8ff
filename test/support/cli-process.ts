// The built CLI as a user runs it (npm test builds dist/ first), its stdout as lines; killed after each test.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach } from 'vitest';

export const CLI = join(import.meta.dirname, '..', '..', 'dist', 'src', 'cli.js');

/** start(args) spawns the CLI; every child started is SIGTERMed after its test. */
export function cliEachTest() {
  // serve and demo log every run by default: into a scratch directory here, never the user's.
  const logDir = mkdtempSync(join(tmpdir(), 'noisescope-cli-test-'));
  const running: ChildProcessWithoutNullStreams[] = [];
  afterEach(() => {
    for (const child of running.splice(0)) child.kill('SIGTERM');
  });
  return function start(args: string[]) {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, NOISESCOPE_LOG_DIR: logDir } });
    running.push(child);
    const lines: string[] = [];
    createInterface({ input: child.stdout }).on('line', (line) => lines.push(line));
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exit = new Promise<number | null>((resolve) => child.on('exit', resolve));
    return { child, lines, stderr: () => stderr, exit };
  };
}
