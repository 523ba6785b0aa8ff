// The recommendation panel's pure lines and the span fitting behind every 80-column line.
import { describe, expect, it } from 'vitest';
import { columns, fitSpans, plain } from '../../tui/fit.js';
import { EMPTY_MODEL, reduce, type DashboardEvent, type RunView } from '../../tui/model.js';
import { describePolicy, percentChange, RECOMMENDATION_LINES, recommendationLines, restartNotice } from '../../tui/recommendation.js';
import type { RecommendationAction } from '../../src/types.js';
import { recommendation, runInfo, step } from './fixtures.js';

function view(...events: DashboardEvent[]): RunView {
  return events.reduce(reduce, EMPTY_MODEL).runs[0]!;
}

describe('fitSpans', () => {
  it('shrinks the least kept span first, the rightmost among equals, and drops spans whose last form is empty', () => {
    const spans = [
      { forms: ['aaaa', 'a'], tone: 'plain' as const, keep: 2 },
      { forms: ['bbbb', 'b'], tone: 'plain' as const, keep: 1 },
      { forms: ['cccc', ''], tone: 'plain' as const, keep: 1 },
    ];
    expect(plain(fitSpans(spans, 12))).toBe('aaaabbbbcccc');
    expect(plain(fitSpans(spans, 9))).toBe('aaaabbbb');
    expect(plain(fitSpans(spans, 5))).toBe('aaaab');
    expect(plain(fitSpans(spans, 2))).toBe('ab');
    // What cannot shrink further is left for the terminal line to truncate.
    expect(plain(fitSpans(spans, 1))).toBe('ab');
  });

  it('interleaves a span’s shrink steps with other spans’ when given one keep per step', () => {
    const spans = [
      { forms: ['long words', 'words', 'w'], tone: 'plain' as const, keep: [1, 3] },
      { forms: [' confidence', ' c'], tone: 'plain' as const, keep: 2 },
    ];
    expect(plain(fitSpans(spans, 16))).toBe('words confidence');
    expect(plain(fitSpans(spans, 8))).toBe('words c');
    expect(plain(fitSpans(spans, 3))).toBe('w c');
  });

  it('counts columns by character, not UTF-16 unit', () => {
    expect(columns('▲ 64 → 128 −32%')).toBe(15);
  });
});

describe('recommendation lines', () => {
  it('formats the predicted change as signed percentages', () => {
    expect([0.68, 1.17, 1, 2, Number.NaN].map(percentChange)).toEqual(['−32%', '+17%', '±0%', '+100%', '–']);
  });

  it('fit 80 columns for every action, large batches and many ranks (the reason aside, which truncates)', () => {
    const actions: RecommendationAction[] = ['increase', 'decrease', 'hold'];
    for (const action of actions) {
      for (const [current, micro, accumulation, ranks] of [
        [64, 32, 4, 1],
        [4096, 512, 8, 8],
        [131072, 1024, 16, 256],
      ] as const) {
        const recommended = action === 'increase' ? current * 2 : action === 'decrease' ? current / 2 : current;
        const r = recommendation({ action, currentGlobalBatch: current, recommendedGlobalBatch: recommended, microBatch: micro, accumulationSteps: accumulation, worldSize: ranks, lrHint: action === 'hold' ? null : { currentLr: 0.00123, suggestedLr: 0.00174, rule: 'sqrt', note: 'x'.repeat(200) } });
        const v = view({ kind: 'step', stats: step(100, { globalBatch: current }) }, { kind: 'recommendation', recommendation: r });
        const lines = recommendationLines(v, 80).map(plain);
        expect(lines).toHaveLength(RECOMMENDATION_LINES);
        for (const [i, line] of lines.entries()) if (i !== 1) expect(columns(line), line).toBeLessThanOrEqual(80);
        expect(lines[0]).toContain(`× ${accumulation} accum × ${ranks} rank`);
        if (action !== 'hold') expect(lines[2]).toContain('lr hint (heuristic, sqrt rule): 0.00123 → 0.00174');
      }
    }
  });

  it('say "applied" once the run trains at the recommended batch', () => {
    const v = view({ kind: 'step', stats: step(101, { globalBatch: 128 }) }, { kind: 'recommendation', recommendation: recommendation() });
    expect(plain(recommendationLines(v, 80)[0]!)).toBe('Recommendation ▲ increase 64 → 128 = 32 × 4 accum × 1 rank · 93% · applied');
  });

  it('list the batch changes the run made while it holds, oldest giving way first', () => {
    const events: DashboardEvent[] = [];
    [64, 128, 256, 512, 1024, 2048].forEach((b, i) => events.push({ kind: 'step', stats: step(i * 100, { globalBatch: b }) }));
    events.push({ kind: 'recommendation', recommendation: recommendation({ action: 'hold', currentGlobalBatch: 2048, recommendedGlobalBatch: 2048 }) });
    const line = plain(recommendationLines(view(...events), 80)[2]!);
    expect(line).toMatch(/^ {2}batch changed: .*1024 → 2048 at step 500$/);
    expect(line).not.toContain('64 → 128');
    expect(columns(line)).toBeLessThanOrEqual(80);
    expect(plain(recommendationLines(view(...events), 200)[2]!)).toContain('batch changed: 64 → 128 at step 100 · 128 → 256 at step 200');
  });

  it('wait with a reason, and name the run’s own policy', () => {
    const v = view({ kind: 'runs', runs: [runInfo({ policy: { maxBatch: 512, maxMicroBatch: 64, maxFactor: 1.5, window: 20 } })] });
    const lines = recommendationLines(v, 80).map(plain);
    expect(lines[0]).toBe('Recommendation waiting for the first measured step');
    expect(lines[2]).toBe("  this run's policy: batch 1–512, micro-batch ≤ 64, ≤ 1.5× per change, window 20 steps");
    expect(describePolicy({})).toBeNull();
    expect(recommendationLines(null, 80, false).map(plain)[0]).toBe('Recommendation this sidecar sends no recommendations');
  });

  it('words a restart by what moved', () => {
    const r = (fromLr: number, toLr: number, fromBatch: number, toBatch: number) =>
      restartNotice({ step: 300, stepsMeasured: 301, change: { fromLr, toLr, fromBatch, toBatch } });
    expect(r(0.05, 0.005, 64, 64)).toBe('lr 0.05 → 0.005 at step 300: smoothing restarted');
    expect(r(0.05, 0.05, 64, 128)).toBe('batch 64 → 128 at step 300: smoothing restarted');
    expect(r(0.05, 0.0707, 64, 128)).toBe('lr 0.05 → 0.0707, batch 64 → 128 at step 300: smoothing restarted');
  });
});
