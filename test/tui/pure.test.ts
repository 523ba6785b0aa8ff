// The dashboard's pure parts: trade-off, chart layout, the model reducer, status colours.
import { describe, expect, it } from 'vitest';
import { layoutChart, RESTART, segments, short } from '../../tui/chart.js';
import { EMPTY_MODEL, examplesPerSecond, HISTORY, KEPT, recentRestart, reduce, RESTART_NOTICE_STEPS, type ChartPoint } from '../../tui/model.js';
import { statusTone, THEME, type Status } from '../../tui/theme.js';
import { candidates, progressPerStep, relativeGradientError } from '../../tui/tradeoff.js';
import { coverageNote } from '../../tui/components/status-lines.js';
import { estimate, recommendation, runInfo, step } from './fixtures.js';

const point = (s: number, bSimple: number | null, extra: Partial<ChartPoint> = {}): ChartPoint => ({
  step: s,
  bSimple,
  low: bSimple === null ? null : bSimple / 2,
  high: bSimple === null ? null : bSimple * 2,
  trusted: true,
  globalBatch: 10,
  unixMs: s * 100,
  temperatureChange: false,
  ...extra,
});

describe('trade-off', () => {
  it('follows S/S_min = 1 + B_noise/B and E/E_min = 1 + B/B_noise, with the knee at B_noise', () => {
    const rows = candidates(64, 256);
    expect(rows.map((c) => c.batch)).toEqual([16, 32, 64, 128, 256]);
    const knee = rows.find((c) => c.knee)!;
    expect(knee).toMatchObject({ batch: 256, steps: 2, examples: 2 });
    expect(rows.find((c) => c.current)).toMatchObject({ batch: 64, steps: 5, examples: 1.25 });
    expect(progressPerStep(64, 192)).toBeCloseTo(0.25);
    expect(relativeGradientError(64, 192)).toBe(3);
  });

  it('always includes the recommended batch, marked, even far from the current one', () => {
    const rows = candidates(64, 256, 3, 1000);
    expect(rows.map((c) => c.batch)).toEqual([64, 256, 1000]);
    expect(rows.filter((c) => c.recommended).map((c) => c.batch)).toEqual([1000]);
    expect(candidates(64, 256, 5, 64).find((c) => c.current)?.recommended).toBe(true);
    expect(candidates(64, 256).some((c) => c.recommended)).toBe(false);
  });
});

describe('chart', () => {
  it('places values on a log scale: the batch at the bottom, B_simple 100× above it at the top', () => {
    const chart = layoutChart([point(0, 1000, { low: 1000, high: 1000 })], 4, 5);
    expect(chart.rows[0]![0]!.ch).toBe('●');
    expect(chart.rows[4]![0]!.ch).toBe('─');
    expect(chart.labels[0]).toBe('1000');
    expect(chart.labels[4]).toBe('10');
  });

  it('keeps the last `width` steps and marks unbounded intervals', () => {
    const points = Array.from({ length: 50 }, (_, i) => point(i, 100, { high: i === 49 ? Infinity : 200 }));
    const chart = layoutChart(points, 20, 6);
    expect([chart.firstStep, chart.lastStep]).toEqual([30, 49]);
    expect(chart.unbounded).toBe(true);
    expect(chart.rows[0]![19]!.ch).toBe('┆');
  });

  it('marks a smoothing restart with a column at its step, over the interval and under the estimate', () => {
    // 20 steps, 10 columns: steps 10–19 shown, the restart at step 12 is column 2.
    const points = Array.from({ length: 20 }, (_, i) => point(i, 100, { low: 20, high: 500, temperatureChange: i === 12 }));
    const chart = layoutChart(points, 10, 6);
    expect(chart.restarts).toBe(true);
    const column = (x: number) => chart.rows.map((r) => r[x]!.ch).join('');
    expect(column(2)).toMatch(new RegExp(`^${RESTART}+●${RESTART}+─$`));
    expect(chart.rows[0]![2]!.tone).toBe('mark');
    for (const x of [1, 3]) expect(column(x)).not.toContain(RESTART);
    expect(layoutChart(points, 5, 6).restarts).toBe(false); // scrolled off
  });

  it('steps the batch line where the global batch changed, up or down, even in the first column', () => {
    const batches = [10, 10, 10, 1000, 1000, 10];
    const points = batches.map((b, i) => point(i, null, { globalBatch: b, low: null, high: null }));
    const chart = layoutChart(points, 6, 5);
    const rows = chart.rows.map((r) => r.map((c) => c.ch).join(''));
    expect(rows).toEqual(['   ╭─╮', '   │ │', '   │ │', '   │ │', '───╯ ╰']);
    expect(chart.batchChanges).toBe(true);
    // Column 0 of a later window is step 3: a change from step 2, which is no longer shown.
    expect(layoutChart(points, 3, 5).rows.map((r) => r[0]!.ch).join('')).toBe('╭│││╯');
    expect(layoutChart(points.slice(0, 3), 3, 5).batchChanges).toBe(false);
  });

  it('draws nothing without positive values, and merges cells of one tone', () => {
    expect(layoutChart([point(0, null, { globalBatch: 0 })], 5, 4).rows.flat().every((c) => c.ch === ' ')).toBe(true);
    expect(segments([{ ch: 'a', tone: 'ok' }, { ch: 'b', tone: 'ok' }, { ch: 'c', tone: 'warn' }])).toEqual([
      { text: 'ab', tone: 'ok' },
      { text: 'c', tone: 'warn' },
    ]);
    expect([short(123456), short(0.5), short(null), short(Infinity)]).toEqual(['123k', '0.5', '–', '∞']);
  });
});

describe('model', () => {
  it('keeps at most HISTORY steps per run and starts the chart anew when a run restarts', () => {
    let m = EMPTY_MODEL;
    for (let i = 0; i < HISTORY + 10; i++) m = reduce(m, { kind: 'step', stats: step(i) });
    expect(m.runs[0]!.history).toHaveLength(HISTORY);
    expect(m.runs[0]!.history[0]!.step).toBe(10);
    m = reduce(m, { kind: 'step', stats: step(0, { smoothed: estimate(7) }) });
    expect(m.runs[0]!.history.map((p) => p.bSimple)).toEqual([7]);
  });

  it('keeps the latest recommendation per run and a short history of them', () => {
    let m = EMPTY_MODEL;
    m = reduce(m, { kind: 'step', stats: step(0) });
    m = reduce(m, { kind: 'recommendation', recommendation: recommendation({ sequence: 1, action: 'hold', recommendedGlobalBatch: 64 }) });
    m = reduce(m, { kind: 'recommendation', recommendation: recommendation({ run: 'resnet', sequence: 1, worldSize: 8 }) });
    m = reduce(m, { kind: 'recommendation', recommendation: recommendation({ sequence: 2 }) });
    const [mlp, resnet] = m.runs;
    expect(mlp!.recommendation).toMatchObject({ sequence: 2, action: 'increase' });
    expect(mlp!.recommendations.map((r) => r.action)).toEqual(['hold', 'increase']);
    // Advice for a run not yet described by runs$: a placeholder run with the advice's world size.
    expect(resnet!.info).toMatchObject({ run: 'resnet', worldSize: 8 });
    expect(resnet!.recommendation?.sequence).toBe(1);
    // A replay of the latest (a reconnect) replaces it; a lower sequence is a restarted run.
    m = reduce(m, { kind: 'recommendation', recommendation: recommendation({ sequence: 2, confidence: 0.5 }) });
    expect(m.runs[0]!.recommendations.map((r) => [r.sequence, r.confidence])).toEqual([[1, 0.93], [2, 0.5]]);
    m = reduce(m, { kind: 'recommendation', recommendation: recommendation({ sequence: 1, action: 'decrease' }) });
    expect(m.runs[0]!.recommendations.map((r) => r.action)).toEqual(['decrease']);
    for (let q = 2; q < 2 + KEPT + 3; q++) m = reduce(m, { kind: 'recommendation', recommendation: recommendation({ sequence: q }) });
    expect(m.runs[0]!.recommendations).toHaveLength(KEPT);
    expect(m.runs[0]!.recommendations.at(-1)!.sequence).toBe(KEPT + 4);
    expect(m.runs[1]!.recommendation?.sequence).toBe(1);
  });

  it('records where the batch changed and the latest smoothing restart, announced for a while', () => {
    const change = { fromLr: 0.1, toLr: 0.01, fromBatch: 64, toBatch: 64 };
    let m = EMPTY_MODEL;
    for (let i = 0; i < 30; i++) {
      const batch = i < 10 ? 64 : i < 20 ? 128 : 256;
      m = reduce(m, { kind: 'step', stats: step(i, { globalBatch: batch, temperatureChange: i === 5 ? change : null }) });
    }
    expect(m.runs[0]!.batchChanges).toEqual([
      { step: 10, from: 64, to: 128 },
      { step: 20, from: 128, to: 256 },
    ]);
    expect(m.runs[0]!.history.filter((p) => p.temperatureChange).map((p) => p.step)).toEqual([5]);
    expect(m.runs[0]!.restart).toEqual({ step: 5, stepsMeasured: 6, change });
    expect(recentRestart(m.runs[0]!)?.step).toBe(5);
    for (let i = 30; i < 6 + RESTART_NOTICE_STEPS; i++) m = reduce(m, { kind: 'step', stats: step(i, { globalBatch: 256 }) });
    expect(recentRestart(m.runs[0]!)).toBeNull();
    // A restarted run (a lower step) forgets what happened after it.
    m = reduce(m, { kind: 'step', stats: step(3) });
    expect(m.runs[0]!.batchChanges).toEqual([]);
    expect(m.runs[0]!.restart).toBeNull();
  });

  it('counts examples per second over skipped steps when measuring every N steps', () => {
    const history = [0, 10, 20].map((s) => point(s, 100, { unixMs: s * 100, globalBatch: 64 }));
    expect(examplesPerSecond(history)).toBeCloseTo((20 * 64) / 2);
  });
});

describe('theme', () => {
  it('maps every status to a tone, and no tone is hard-coded white or black', () => {
    const statuses: Status[] = ['waiting', 'warming-up', 'trusted', 'no-estimate', 'rank-missing', 'ended', 'disconnected'];
    expect(statuses.map(statusTone)).toEqual(['muted', 'warn', 'ok', 'warn', 'warn', 'muted', 'error']);
    for (const style of Object.values(THEME)) expect(['white', 'black']).not.toContain(style.color);
  });
});

describe('coverage note', () => {
  const layer = (numel: number) => ({ name: `u${numel}`, numel, kind: 'Parameter' });
  it('is absent when every parameter is covered', () => {
    expect(coverageNote(runInfo({ uncoveredLayers: [] }))).toBeNull();
    expect(coverageNote(null)).toBeNull();
  });
  it('rounds the covered share down, so a left-out layer never reads as 100%', () => {
    expect(coverageNote(runInfo({ parameters: 9_999, uncoveredLayers: [layer(1)] }))).toBe('covers 99% of parameters; 1 layer not covered');
    expect(coverageNote(runInfo({ parameters: 1, uncoveredLayers: [layer(1_000), layer(2)] }))).toBe('covers <1% of parameters; 2 layers not covered');
  });
});
