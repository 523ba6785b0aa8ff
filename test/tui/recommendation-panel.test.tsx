// The recommendation panel, the restart markers and the trade-off's recommended row, rendered
// by ink-testing-library from scripted Observables at 80×24 (and wider where it shows more).
import { render } from 'ink-testing-library';
import { from, lastValueFrom, map, toArray } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_BATCH_POLICY } from '../../src/recommend/batch-policy.js';
import { recommendBatchSize } from '../../src/recommend/recommend-batch-size.js';
import { Dashboard } from '../../tui/dashboard.js';
import { estimate, health, layerStats, recommendation, runInfo, scriptedSources, step } from './fixtures.js';

const mounted: (() => void)[] = [];
afterEach(() => {
  for (const unmount of mounted.splice(0)) unmount();
});

function mount(columns = 80, sources = scriptedSources()) {
  const view = render(<Dashboard sources={sources.sources} columns={columns} rows={24} updatesPerSecond={50} />);
  mounted.push(view.unmount);
  const frame = () => view.lastFrame() ?? '';
  return { ...sources, ...view, frame };
}

/** B_simple 128 at a batch of 64 for 100 steps. */
function steady(m: ReturnType<typeof mount>) {
  m.runs.next([runInfo()]);
  for (let i = 0; i <= 100; i++) m.stats.next(step(i, { smoothed: estimate(128) }));
  m.layers.next(layerStats(6, 'mlp', 100));
  m.health.next(health({ stepsCompleted: 101 }));
}

function expectFits(frame: string, columns = 80) {
  const lines = frame.split('\n');
  expect(lines.length).toBeLessThan(24);
  for (const line of lines) expect([...line].length).toBeLessThanOrEqual(columns);
}

describe('recommendation panel', () => {
  it('says what the policy waits for: the first step, an untrusted estimate, a trusted one without advice', async () => {
    const m = mount();
    m.runs.next([runInfo()]);
    await expect.poll(m.frame).toContain('Recommendation waiting for the first measured step');
    m.stats.next(step(0, { smoothed: estimate(300, { trusted: false, interval: { low: 40, high: Infinity } }) }));
    await expect.poll(m.frame).toContain('Recommendation waiting: the estimate is not trusted yet');
    expect(m.frame()).toContain("a change needs B_simple's interval to exclude the batch 64");
    m.stats.next(step(1, { smoothed: null, note: 'one batch scale: use gradient accumulation' }));
    await expect.poll(m.frame).toContain('Recommendation waiting: no estimate yet\n'); // the note is in the header
    m.stats.next(step(2));
    await expect.poll(m.frame).toContain('waiting: the estimate is trusted, the policy has not advised yet');
    expectFits(m.frame());
  });

  it('says so when the sidecar sends no recommendations', async () => {
    const s = scriptedSources();
    const { recommendations$: _, ...withoutAdvice } = s.sources;
    const m = mount(80, { ...s, sources: withoutAdvice });
    steady(m);
    await expect.poll(m.frame).toContain('Recommendation this sidecar sends no recommendations');
  });

  it('shows the run’s own policy while waiting', async () => {
    const m = mount();
    m.runs.next([runInfo({ policy: { objective: 'time', minBatch: 32, maxBatch: 1024, monotone: true } })]);
    await expect.poll(m.frame).toContain("this run's policy: objective time, batch 32–1024, ramp-up only");
  });

  it('shows an increase: batches and how, confidence, reason, steps and examples, the lr hint labelled a heuristic', async () => {
    const m = mount();
    steady(m);
    m.recommendations.next(recommendation());
    await expect.poll(m.frame).toContain('Recommendation ▲ increase 64 → 128 = 32 × 4 accum × 1 rank · confidence 93%');
    const f = m.frame();
    // The reason after the step it was made at; its tail gives way at 80 columns (whole at 200, below).
    expect(f).toContain('  at step 100: B_noise 150 [120, 190] has stayed above the batch 64 for 10 meas…');
    expect(f).toContain('  −32% steps, +17% examples · lr hint (heuristic, sqrt rule): 0.05 → 0.0707');
    expectFits(f);
  });

  it('shows a decrease, and an advice without an lr hint', async () => {
    const m = mount();
    steady(m);
    m.recommendations.next(
      recommendation({
        action: 'decrease',
        recommendedGlobalBatch: 32,
        microBatch: 8,
        stepsFactor: 1.32,
        examplesFactor: 0.66,
        lrHint: null,
        confidence: 0.871,
        reason: 'B_noise 30 [20, 45] has stayed below the batch 64 for 10 measured steps.',
      }),
    );
    await expect.poll(m.frame).toContain('Recommendation ▼ decrease 64 → 32 = 8 × 4 accum × 1 rank · confidence 87%');
    expect(m.frame()).toContain('+32% steps, −34% examples');
    expect(m.frame()).toContain('+32% steps, −34% examples · no lr hint (the hook reports no learning rate)');
    expectFits(m.frame());
  });

  it('shows a hold with how the batch is made, and since when', async () => {
    const m = mount();
    steady(m);
    m.recommendations.next(
      recommendation({
        action: 'hold',
        recommendedGlobalBatch: 64,
        microBatch: 16,
        stepsFactor: 1,
        examplesFactor: 1,
        lrHint: null,
        confidence: 0.6,
        reason: 'The batch 64 lies inside the interval [50, 200] of B_noise.',
      }),
    );
    await expect.poll(m.frame).toContain('Recommendation ■ hold at 64 = micro-batch 16 × 4 accum × 1 rank · confidence 60%');
    expect(m.frame()).toContain('  at step 100: The batch 64 lies inside the interval [50, 200] of B_noise.');
    expect(m.frame()).toContain('  holding since step 100');
    expect(m.frame()).not.toContain('lr hint');
    expectFits(m.frame());
  });

  it('shows more on a wide terminal: "to the same loss", micro-batch spelled out, the hint’s note', async () => {
    const m = mount(200);
    steady(m);
    m.recommendations.next(recommendation());
    await expect.poll(m.frame).toContain('= micro-batch 32 × 4 accumulation steps × 1 rank · confidence 93%');
    expect(m.frame()).toContain('  at step 100: B_noise 150 [120, 190] has stayed above the batch 64 for 10 measured steps.\n');
    expect(m.frame()).toContain('to the same loss: −32% steps, +17% examples · lr hint (heuristic, sqrt rule): 0.05 → 0.0707 — A heuristic');
    expectFits(m.frame(), 200);
  });

  it('names the step its reason is from: the advice stands while the header’s estimate moves on', async () => {
    // The sidecar's own policy on an estimate drifting from 100 to 250 at a batch of 64: it advises
    // 64 → 112 early, revises it once the target has moved REVISION_RATIO, to 128 (capped at 2×), and then stays.
    const steps = Array.from({ length: 101 }, (_, i) => step(i, { smoothed: estimate(100 + 1.5 * i) }));
    const advice = await lastValueFrom(
      from(steps).pipe(
        map((stats) => ({ stats, run: runInfo() })),
        recommendBatchSize(DEFAULT_BATCH_POLICY),
        toArray(),
      ),
    );
    expect(advice.map((r) => [r.action, r.recommendedGlobalBatch])).toEqual([['increase', 112], ['increase', 128]]);
    const r = advice.at(-1)!;
    expect(r.step).toBeLessThan(50);
    const m = mount(200);
    m.runs.next([runInfo()]);
    for (const s of steps) m.stats.next(s);
    m.recommendations.next(r);
    await expect.poll(m.frame).toContain('▲ increase 64 → 128');
    const f = m.frame();
    expect(f).toContain('step 100');
    expect(f).toContain('B_simple 250 [200, 325]');
    expect(f).toContain(`  at step ${r.step}: B_simple ≈ ${Math.round(100 + 1.5 * r.step)} (interval `);
  });

  it('follows the run shown: each run has its own latest advice', async () => {
    const m = mount();
    steady(m);
    m.runs.next([runInfo(), runInfo({ run: 'resnet' })]);
    m.stats.next(step(7, { run: 'resnet', globalBatch: 256, smoothed: estimate(900) }));
    m.recommendations.next(recommendation({ run: 'resnet', currentGlobalBatch: 256, recommendedGlobalBatch: 512, microBatch: 64 }));
    m.recommendations.next(recommendation({ run: 'mlp', action: 'hold', recommendedGlobalBatch: 64 }));
    await expect.poll(m.frame).toContain('■ hold at 64');
    m.stdin.write(']');
    await expect.poll(m.frame).toContain('▲ increase 256 → 512 = 64 × 4 accum');
  });
});

describe('trade-off panel', () => {
  it('highlights the recommended batch’s row, and adds it when it is not a candidate', async () => {
    const m = mount();
    steady(m);
    m.recommendations.next(recommendation());
    // 128 is the knee as well as the advice.
    await expect.poll(m.frame).toMatch(/→\s+128\s+2\s+2 rec,knee/);
    expect(m.frame()).toMatch(/▶\s+64\s+3\s+1\.5 now/);
    m.recommendations.next(recommendation({ sequence: 3, recommendedGlobalBatch: 100, microBatch: 25 }));
    // 100 is none of the current, the knee or their neighbours: added, S/S_min = 1 + 128/100.
    await expect.poll(m.frame).toMatch(/→\s+100\s+2\.28\s+1\.78 rec/);
  });

  it('marks the current row "hold" when the advice holds', async () => {
    const m = mount();
    steady(m);
    m.recommendations.next(recommendation({ action: 'hold', recommendedGlobalBatch: 64 }));
    await expect.poll(m.frame).toMatch(/▶\s+64\s+3\s+1\.5 hold/);
  });
});

describe('smoothing restarts on the chart', () => {
  const change = { fromLr: 0.05, toLr: 0.005, fromBatch: 64, toBatch: 64 };

  it('marks the step, says what changed for a while, then keeps a legend entry', async () => {
    const m = mount();
    m.runs.next([runInfo()]);
    for (let i = 0; i <= 100; i++) {
      m.stats.next(step(i, { smoothed: estimate(i < 80 ? 128 : 1280), temperatureChange: i === 80 ? change : null, regimeStartStep: i < 80 ? 0 : 80 }));
    }
    await expect.poll(m.frame).toContain('┃ lr 0.05 → 0.005 at step 80: smoothing restarted');
    // Steps 32–100 are shown: step 80 is the 49th column of the plot.
    const rows = m.frame().split('\n').filter((l) => l.includes('┤'));
    const column = (l: string) => [...l].indexOf('┤') + 1 + 48;
    expect(rows.some((l) => [...l][column(l)] === '┃')).toBe(true);
    for (const l of rows) expect([...l].filter((c) => c === '┃').length).toBeLessThanOrEqual(1);
    expect(m.frame()).toContain('Recommendation waiting');
    expect(m.frame()).toContain('lr 0.05 → 0.005 at step 80: smoothing restarted; no advice from the transient');
    expectFits(m.frame());
    // 50 measured steps on, the notice goes; the marker and its legend entry stay while shown.
    for (let i = 101; i <= 130; i++) m.stats.next(step(i, { smoothed: estimate(1280), regimeStartStep: 80 }));
    await expect.poll(m.frame).toContain('step 130');
    expect(m.frame()).not.toContain('smoothing restarted');
    expect(m.frame()).toContain('┃ lr/B changed');
  });

  it('names a batch change that restarted the smoothing, and steps the batch line', async () => {
    const m = mount();
    m.runs.next([runInfo()]);
    for (let i = 0; i <= 100; i++) {
      const batch = i < 90 ? 64 : 256;
      m.stats.next(step(i, { globalBatch: batch, smoothed: estimate(512), temperatureChange: i === 90 ? { ...change, toLr: 0.05, toBatch: 256 } : null }));
    }
    await expect.poll(m.frame).toContain('┃ batch 64 → 256 at step 90: smoothing restarted');
    expect(m.frame()).toMatch(/─{10,}╯/); // the old batch line ends in a step up
    expect(m.frame()).toMatch(/╭─{5,}/); // and goes on higher
  });

  it('flags advice made before a later restart', async () => {
    const m = mount();
    m.runs.next([runInfo()]);
    for (let i = 0; i <= 100; i++) m.stats.next(step(i, { temperatureChange: i === 95 ? change : null }));
    m.recommendations.next(recommendation({ step: 90 }));
    await expect.poll(m.frame).toContain('▲ increase 64 → 128');
    expect(m.frame()).toContain('  at step 90, before the restart at step 95: B_noise 150');
  });
});
