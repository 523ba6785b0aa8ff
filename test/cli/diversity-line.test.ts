// A rank that disagrees with the other ranks, where users read it: serve's step line (formatStep) and the
// dashboard's diversity line. The diversity is the sidecar's own (gradientDiversity, rankAgreement) over a
// cross-rank Gram worked out here in float64 from explicit gradients, rank 1's being noise.
import { render } from 'ink-testing-library';
import { createElement } from 'react';
import { afterEach, describe, expect, it } from 'vitest';
import { formatStep } from '../../src/cli/format.js';
import { gradientDiversity, rankAgreement } from '../../src/stats/gradient-diversity.js';
import type { GradientDiversity } from '../../src/types.js';
import { Dashboard } from '../../tui/dashboard.js';
import { cosine, diversitySpans, summarizeDiversity } from '../../tui/diversity.js';
import { fitSpans, plain } from '../../tui/fit.js';
import { seeded } from '../support/dense-gradients.js';
import { estimate, health, runInfo, scriptedSources, step } from '../tui/fixtures.js';

const N = 300;

/** world × k gradients (gradient r·k + j) sharing one direction, the noisy ranks' replaced by noise alone. */
function gradients(world: number, k: number, noisy: readonly number[]): Float64Array[] {
  const random = seeded(5);
  const uniform = () => 2 * random() - 1;
  const shared = Float64Array.from({ length: N }, uniform);
  return Array.from({ length: world * k }, (_, g) =>
    noisy.includes(Math.floor(g / k)) ? Float64Array.from({ length: N }, () => 5 * uniform()) : shared.map((x) => x + 0.5 * uniform()),
  );
}

/** Each rank's diversity with acrossRanks, from the one-layer cross-rank Gram of `gs`. */
function diversityOf(gs: readonly Float64Array[], world: number, k: number): GradientDiversity[] {
  const n = world * k;
  const dot = (a: Float64Array, b: Float64Array) => a.reduce((s, x, i) => s + x * (b[i] as number), 0);
  const gram = Float64Array.from({ length: n * n }, (_, q) => dot(gs[Math.floor(q / n)]!, gs[q % n]!));
  const across = rankAgreement([gram], world, k);
  return across.map((acrossRanks, r) => {
    const own = Float64Array.from({ length: k * k }, (_, q) => gram[(r * k + Math.floor(q / k)) * n + r * k + (q % k)]!);
    return { ...gradientDiversity(r, [own], k), acrossRanks };
  });
}

describe("serve's step line", () => {
  it('names the rank that disagrees with the other ranks, with its mean cosine to them', () => {
    const diversity = diversityOf(gradients(3, 2, [1]), 3, 2);
    expect(diversity.map((d) => d.acrossRanks?.disagrees)).toEqual([false, true, false]);
    const line = formatStep(step(7, { ranks: 3, microBatches: 2, globalBatch: 96, smoothed: estimate(120), diversity }));
    expect(line).toMatch(/ {2}rank 1 disagrees \(cos -?0\.\d\d\)$/);
    expect(line).toContain(`rank 1 disagrees (cos ${diversity[1]!.acrossRanks!.meanCosine.toFixed(2)})`);
    expect(line).not.toMatch(/rank [02] disagrees/);
  });

  it('says nothing of ranks when they agree, and nothing on a one-rank step', () => {
    const agree = diversityOf(gradients(3, 2, []), 3, 2);
    expect(formatStep(step(7, { ranks: 3, smoothed: estimate(120), diversity: agree }))).not.toContain('disagrees');
    const one = diversityOf(gradients(1, 3, []), 1, 3).map(({ acrossRanks: _, ...d }) => d);
    expect(formatStep(step(7, { smoothed: estimate(120), diversity: one }))).not.toContain('disagrees');
  });
});

describe("the dashboard's diversity line", () => {
  const mounted: (() => void)[] = [];
  afterEach(() => {
    for (const unmount of mounted.splice(0)) unmount();
  });

  it('flags the rank, its cosine to the other ranks kept longest as the line shrinks', () => {
    const diversity = diversityOf(gradients(3, 2, [1]), 3, 2);
    const summary = summarizeDiversity(diversity)!;
    expect(summary.ranksDisagreeing).toEqual([{ rank: 1, meanCosine: diversity[1]!.acrossRanks!.meanCosine }]);
    const c = cosine(diversity[1]!.acrossRanks!.meanCosine);
    expect(plain(fitSpans(diversitySpans(summary), 200))).toMatch(new RegExp(` ⚠ rank 1 disagrees \\(cos ${c} to the other ranks\\)$`));
    expect(plain(fitSpans(diversitySpans(summary), 50))).toMatch(/⚠ r(ank )?1 disagrees/);
    // One micro-batch per rank: no pair within a rank, but the rank still stands out.
    const single = summarizeDiversity(diversityOf(gradients(3, 1, [2]), 3, 1))!;
    expect(plain(fitSpans(diversitySpans(single), 120))).toMatch(/^Diversity no pairs to compare \(one micro-batch per rank\) ⚠ rank 2 disagrees/);
  });

  it('shows it in the 80×24 dashboard', async () => {
    const diversity = diversityOf(gradients(3, 2, [1]), 3, 2);
    const sources = scriptedSources();
    const view = render(createElement(Dashboard, { sources: sources.sources, columns: 80, rows: 24, updatesPerSecond: 50 }));
    mounted.push(view.unmount);
    sources.runs.next([runInfo({ mode: 'dense', worldSize: 3 })]);
    for (let i = 0; i < 20; i++) sources.stats.next(step(i, { ranks: 3, diversity }));
    sources.health.next(health({ stepsCompleted: 20 }));
    await expect.poll(() => view.lastFrame() ?? '').toMatch(/⚠ r(ank )?1 disagrees/);
    expect(view.lastFrame()).not.toMatch(/r(ank )?[02] disagrees/);
  });
});
