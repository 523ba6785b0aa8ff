// The diversity line in a real 80×24 terminal (tmux): `serve` fed by real dense-mode training through
// the Python hook, where one of the four micro-batches backpropagates its negated loss, so its
// gradient points against the other three and the sidecar must flag it.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'dist', 'src', 'cli.js');
const PYTHON = join(ROOT, '.venv', 'bin', 'python');
const session = `noisescope-diversity-${process.pid}`;
// Ink draws no live frames when CI is set (CI runs this suite with CI=true); a person's terminal has no CI.
const NODE = `env -u CI ${process.execPath}`;
const STEPS = 8;

// Micro-batches of 128 on the demo's load_digits MLP: their gradients' cosines are ≈ 1/(1 + B_simple/128)
// ≈ 0.5 (B_simple ≈ 100–140), well above the 0.1 the flag needs the others to agree by.
const TRAIN = `
import sys, time, torch, noisescope
from torch.nn import functional as F
from noisescope import demo
data = demo.make_data()
torch.manual_seed(0)
model = demo.make_model(seed=0)
optimizer = demo.make_optimizer(model)
ns = noisescope.watch(model, optimizer, address=sys.argv[1], run="flipped", dataset_size=len(data), mode="dense")
x, y = data.tensors
draw = torch.Generator().manual_seed(0)
for step in range(${STEPS}):
    for micro in range(4):
        pick = torch.randint(0, len(x), (128,), generator=draw)
        loss = F.cross_entropy(model(x[pick]), y[pick])
        (-loss if micro == 2 else loss).backward()
    optimizer.step()
    optimizer.zero_grad()
    time.sleep(0.05)  # dense buffers are few: let each step's chunks leave before the next
ns.remove()
`;

const tmux = (...args: string[]) => execFileSync('tmux', args, { encoding: 'utf8' });
const capture = () => tmux('capture-pane', '-p', '-t', session);

afterEach(() => {
  spawnSync('tmux', ['kill-session', '-t', `=${session}`]);
});

it('serve shows the diversity of a dense run and flags the micro-batch whose gradient is reversed', async () => {
  expect(spawnSync('tmux', ['-V']).status, 'tmux is missing: run `npm run setup`').toBe(0);
  expect(existsSync(CLI), `${CLI} is missing: run \`npm run build\``).toBe(true);
  expect(existsSync(PYTHON), `${PYTHON} is missing: run \`npm run setup\``).toBe(true);
  const port = 20000 + ((process.pid + 13) % 20000);
  tmux('new-session', '-d', '-s', session, '-x', '80', '-y', '24', `${NODE} ${CLI} serve --port ${port} --no-log`);
  await expect.poll(capture, { timeout: 15_000 }).toContain('no run yet');
  const train = spawnSync(PYTHON, ['-c', TRAIN, `127.0.0.1:${port}`], { encoding: 'utf8', timeout: 120_000 });
  expect(train.status, train.stderr).toBe(0);
  await expect.poll(capture, { timeout: 15_000 }).toMatch(/⚠ micro-batch 2 disagrees/);
  const screen = capture();
  expect(screen).toMatch(/Diversity cos mean −?\d\.\d\d min −0\.\d\d/); // the reversed gradient makes the least cosine negative
  expect(screen).toMatch(/Scales: accumulation \(4 micro-batches × 1 rank/);
  for (const line of screen.split('\n')) expect([...line].length).toBeLessThanOrEqual(80);
  tmux('send-keys', '-t', session, 'q');
  await expect.poll(() => spawnSync('tmux', ['has-session', '-t', session]).status, { timeout: 10_000 }).not.toBe(0);
}, 180_000);
