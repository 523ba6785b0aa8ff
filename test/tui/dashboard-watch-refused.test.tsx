// `noisescope dashboard` refused by a real sidecar before any run arrives: the whole reason is on
// screen at 80 columns (the header's line cuts it), with what to do.
import { render } from 'ink-testing-library';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { watchSidecar } from '../../src/remote/watch-client.js';
import { startSidecar, type Sidecar } from '../../src/sidecar.js';
import { Dashboard } from '../../tui/dashboard.js';

const TOKEN = 'sidecar-token-0123456789abcdef';
const RUN_A_TOKEN = 'run-a-token-fedcba9876543210';
let sidecar: Sidecar;
beforeAll(async () => {
  sidecar = await startSidecar({ port: 0, token: TOKEN, runTokens: { 'run-a': RUN_A_TOKEN } });
});
afterAll(() => sidecar.close());

it.each([
  ["a run's token without --run", RUN_A_TOKEN, "this token opens only run 'run-a', not every run: watch it by name (noisescope dashboard --run run-a)"],
  ['a wrong token', 'not-the-token-0123456789', 'the dashboard: --token-file or NOISESCOPE_TOKEN)'],
])('shows why the sidecar refused the dashboard, in full at 80 columns: %s', async (_what, token, words) => {
  const remote = watchSidecar(sidecar.address, { token, retryMs: 10_000 });
  const view = render(<Dashboard sources={remote} columns={80} rows={24} updatesPerSecond={50} keys={false} />);
  try {
    // Ink wraps the reason inside the chart's border: compare it without the frame.
    const text = () => (view.lastFrame() ?? '').replace(/[│╭╮╰╯─]/g, ' ').replace(/\s+/g, ' ');
    await expect.poll(text, { timeout: 10_000 }).toContain('none yet, the connection is lost:');
    expect(text()).toContain(words);
  } finally {
    view.unmount();
    remote.close();
  }
});
