import { expect, it } from 'vitest';
import { formatRun } from '../../src/cli/format.js';
import { runInfo } from '../tui/fixtures.js';

it("a run's plain line says how many layers and parameters the estimate does not cover", () => {
  const covered = formatRun(runInfo({ run: 'm', parameters: 39_000 }));
  expect(covered).not.toContain('not covered');
  const partial = formatRun(runInfo({ run: 'm', parameters: 39_000, uncoveredLayers: [{ name: 'pos', numel: 1_000, kind: 'Parameter' }, { name: 'q', numel: 24, kind: 'Parameter' }] }));
  expect(partial).toContain('39,000 parameters (2 more layers, 1,024 parameters, not covered)');
});

it("a run's plain line says when its per-example sums are sampled estimates", () => {
  expect(formatRun(runInfo({ source: 'per-example', perExampleSampled: true }))).toContain('source per-example (per-example sums sampled)');
  expect(formatRun(runInfo({ source: 'per-example' }))).not.toContain('sampled');
});
