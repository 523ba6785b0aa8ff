// The dashboard header names the run's mode (norms / dense / sketch with its m and wire dtype) beside the
// run, and the scales line its source, at 80 columns.
import { render } from 'ink-testing-library';
import { afterEach, describe, expect, it } from 'vitest';
import type { RunInfo } from '../../src/types.js';
import { Dashboard } from '../../tui/dashboard.js';
import { health, runInfo, scriptedSources, step } from './fixtures.js';

const LAYERS = [
  { name: 'fc1.weight', numel: 8192, kind: 'Linear' },
  { name: 'fc1.bias', numel: 128, kind: 'Linear' },
  { name: 'fc2.weight', numel: 1280, kind: 'Linear' },
];
const mounted: (() => void)[] = [];
afterEach(() => {
  for (const unmount of mounted.splice(0)) unmount();
});

async function header(info: RunInfo): Promise<string> {
  const s = scriptedSources();
  const view = render(<Dashboard sources={s.sources} columns={80} rows={24} updatesPerSecond={50} />);
  mounted.push(view.unmount);
  s.runs.next([info]);
  s.stats.next(step(3, { run: info.run, source: info.source === 'none' ? 'accumulation' : info.source }));
  s.health.next(health());
  const frame = () => view.lastFrame() ?? '';
  await expect.poll(frame).toContain('4 micro-batches × '); // the step has arrived
  const lines = frame().split('\n');
  for (const line of lines) expect(line.length).toBeLessThanOrEqual(80);
  return frame();
}

describe('dashboard header', () => {
  it('names a sketch run by its m and wire dtype, beside the run, ranks and step', async () => {
    const info = runInfo({ mode: 'sketch', layers: LAYERS, parameters: 9600, sketch: { sizes: [1024, 128, 1024], dtype: 'DTYPE_F16' } });
    const frame = await header(info);
    expect(frame.split('\n')[0]).toMatch(/^noisescope mlp {2}sketch m=1024 fp16 {2}ranks 1\/1 {2}step 3 /);
  });

  it('names norms and dense runs, and the scales line names the source', async () => {
    const norms = await header(runInfo({ mode: 'norms', source: 'accumulation' }));
    expect(norms.split('\n')[0]).toMatch(/^noisescope mlp {2}norms {2}ranks 1\/1/);
    expect(norms).toMatch(/Scales: accumulation/);
    const dense = await header(runInfo({ run: 'big', mode: 'dense', source: 'data-parallel', worldSize: 2, ranksConnected: 2 }));
    expect(dense.split('\n')[0]).toMatch(/^noisescope big {2}dense {2}ranks 2\/2/);
    expect(dense).toMatch(/Scales: data-parallel/);
  });

  it('keeps the mode when a long run name fills the line: uptime, backend and throughput give way first', async () => {
    const run = 'a-forty-character-run-name-from-a-script';
    const frame = await header(runInfo({ run, mode: 'sketch', layers: LAYERS, sketch: { sizes: [1024, 128, 1024], dtype: 'DTYPE_BF16' } }));
    expect(frame.split('\n')[0]).toMatch(new RegExp(`^noisescope ${run} {2}sketch {2}ranks 1/1 {2}step 3$`));
  });
});
