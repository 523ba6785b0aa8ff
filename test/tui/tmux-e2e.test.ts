// The dashboard in a real 80×24 terminal (tmux), fed by real training through the Python hook.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'dist', 'src', 'cli.js');
const PYTHON = join(ROOT, '.venv', 'bin', 'python');
// npm test installs all three (.ci/bootstrap); a missing one fails here rather than skipping.
function requireSetUp(): void {
  expect(spawnSync('tmux', ['-V']).status, 'tmux is missing: run `npm run setup`').toBe(0);
  expect(existsSync(CLI), `${CLI} is missing: run \`npm run build\``).toBe(true);
  expect(existsSync(PYTHON), `${PYTHON} is missing: run \`npm run setup\``).toBe(true);
}
const session = `noisescope-e2e-${process.pid}`;
// Ink draws no live frames when CI is set (CI runs this suite with CI=true); a person's terminal has no CI.
const NODE = `env -u CI ${process.execPath}`;

const tmux = (...args: string[]) => execFileSync('tmux', args, { encoding: 'utf8' });
const capture = () => tmux('capture-pane', '-p', '-t', session);

afterEach(() => {
  spawnSync('tmux', ['kill-session', '-t', `=${session}`]); // exact name; even when the test failed
});

it('serve shows the live dashboard in an 80×24 terminal while a real model trains', async () => {
  requireSetUp();
  const port = 20000 + (process.pid % 20000);
  tmux('new-session', '-d', '-s', session, '-x', '80', '-y', '24', `${NODE} ${CLI} serve --port ${port} --no-log`);
  await expect.poll(capture, { timeout: 15_000 }).toContain('no run yet');
  const train = spawnSync(PYTHON, ['-m', 'noisescope.demo', '--address', `127.0.0.1:${port}`, '--steps', '120', '--step-time', '0'], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  expect(train.status, train.stderr).toBe(0);
  await expect.poll(capture, { timeout: 15_000 }).toContain('step 119');
  const screen = capture();
  expect(screen).toMatch(/B_simple \d+(\.\d+)? \[/); // a value with its interval
  expect(screen).toMatch(/●{5,}/); // the chart
  expect(screen).toContain('─ batch 64');
  expect(screen).toMatch(/0\.weight\s+\d/); // the layer table
  // One process, 4 micro-batches per step: watch()'s automatic source takes the accumulation (no per-example work).
  expect(screen).toMatch(/Scales: accumulation \(4 micro-batches × 1 rank, 2 batch scales\)/);
  // The sidecar's own policy advised (the demo's B_simple ≈ 100–140 at a batch of 64), and the
  // trade-off marks the advised row ("rec" for a change, "hold" on the current one).
  expect(screen).toMatch(/Recommendation (▲ increase 64 → \d+|▼ decrease 64 → \d+|■ hold at 64) = /);
  expect(screen).toMatch(/\d+\s+[\d.]+\s+[\d.]+ (rec|hold)/);
  // The reason names the step it was made at: the header's estimate is the latest step's.
  expect(screen).toMatch(/^ {2}at step \d+: /m);
  for (const line of screen.split('\n')) expect([...line].length).toBeLessThanOrEqual(80);
  tmux('send-keys', '-t', session, 'q');
  await expect.poll(() => spawnSync('tmux', ['has-session', '-t', session]).status, { timeout: 10_000 }).not.toBe(0);
}, 180_000);

it('`dashboard --address` follows a `serve --no-dashboard` sidecar and shows when it goes away', async () => {
  requireSetUp();
  const port = 20000 + ((process.pid + 7) % 20000);
  // Both in one tmux session: the sidecar in a TTY still prints plain lines with --no-dashboard.
  tmux('new-session', '-d', '-s', session, '-x', '80', '-y', '24', `${NODE} ${CLI} serve --port ${port} --no-dashboard --no-log`);
  await expect.poll(capture, { timeout: 15_000 }).toContain(`noisescope listening on 127.0.0.1:${port}`);
  tmux('new-window', '-t', session, `${NODE} ${CLI} dashboard --address 127.0.0.1:${port}`);
  const dashboard = () => tmux('capture-pane', '-p', '-t', `${session}:1`);
  await expect.poll(dashboard, { timeout: 15_000 }).toContain('no run yet');
  const train = spawnSync(PYTHON, ['-m', 'noisescope.demo', '--address', `127.0.0.1:${port}`, '--steps', '60', '--step-time', '0'], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  expect(train.status, train.stderr).toBe(0);
  await expect.poll(dashboard, { timeout: 15_000 }).toContain('step 59');
  expect(dashboard()).toMatch(/B_simple \d+(\.\d+)? \[/);
  expect(dashboard()).toMatch(/Recommendation (▲ increase|▼ decrease|■ hold) /); // over Watch too
  const plain = tmux('capture-pane', '-p', '-J', '-t', `${session}:0`);
  expect(plain).toMatch(/step 59\s+B 64 \(4 micro\)/); // the plain lines, unchanged
  tmux('send-keys', '-t', `${session}:0`, 'C-c');
  await expect.poll(dashboard, { timeout: 15_000 }).toContain(`connection to 127.0.0.1:${port} lost`);
  tmux('send-keys', '-t', `${session}:1`, 'q');
}, 180_000);

it('`demo` in an 80×24 terminal: the end of training fits the keys line, and q leaves the summary with the standing advice', async () => {
  requireSetUp();
  // The shell stays after the demo exits, so its summary can be read from the pane.
  tmux('new-session', '-d', '-s', session, '-x', '80', '-y', '24', `${NODE} ${CLI} demo --no-log -- --steps 60 --step-time 0; sleep 60`);
  await expect.poll(capture, { timeout: 60_000 }).toMatch(/│ train: done: full-set loss [\d.]+, accuracy [\d.]+% · exit 0$/m);
  for (const line of capture().split('\n')) expect([...line].length).toBeLessThanOrEqual(80);
  tmux('send-keys', '-t', session, 'q');
  const joined = () => tmux('capture-pane', '-p', '-J', '-t', session);
  await expect.poll(joined, { timeout: 15_000 }).toMatch(/^ {2}Standing advice: demo-\S+ step \d+ {2}recommendation #\d+: /m);
  expect(joined()).toMatch(/^demo-\S+: B_simple ≈ [\d.]+ \[/m); // the summary above it
}, 120_000);
