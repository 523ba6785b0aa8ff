// The dashboard's pure parts: trade-off, chart layout, the model reducer, status colours.
import { describe, expect, it } from 'vitest';
import { layoutChart, segments, short } from '../../tui/chart.js';
import { EMPTY_MODEL, examplesPerSecond, HISTORY, reduce, type ChartPoint } from '../../tui/model.js';
import { statusTone, THEME, type Status } from '../../tui/theme.js';
import { candidates, progressPerStep, relativeGradientError } from '../../tui/tradeoff.js';
import { estimate, step } from './fixtures.js';

const point = (s: number, bSimple: number | null, extra: Partial<ChartPoint> = {}): ChartPoint => ({
  step: s,
  bSimple,
  low: bSimple === null ? null : bSimple / 2,
  high: bSimple === null ? null : bSimple * 2,
  trusted: true,
  globalBatch: 10,
  unixMs: s * 100,
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
