import { describe, expect, it } from 'vitest';
import { ScriptedRun, estimate, runInfo } from './fixtures.js';

// B = 32 (16 × 2 on one rank) and B_simple ≈ 100: every usable step says "increase".
const fresh = () => new ScriptedRun(runInfo(), { microBatch: 16, accumulationSteps: 2 }, false);
const feedN = (r: ScriptedRun, n: number, extra: Parameters<ScriptedRun['feed']>[1] = {}) => {
  for (let i = 0; i < n; i++) r.feed(estimate(100), extra);
};

describe('the evidence streak', () => {
  it('a change needs exactly `window` consecutive usable steps', () => {
    const r = fresh();
    feedN(r, 9);
    expect(r.recommendations).toEqual([]);
    feedN(r, 1);
    expect(r.recommendations.map((x) => [x.step, x.action, x.recommendedGlobalBatch])).toEqual([[10, 'increase', 64]]);
  });

  it('the window comes from the run’s policy', () => {
    const r = new ScriptedRun(runInfo({ policy: { window: 3 } }), { microBatch: 16, accumulationSteps: 2 });
    feedN(r, 3);
    expect(r.recommendations.map((x) => x.step)).toEqual([3]);
  });

  it('an unusable step (skipped, untrusted, no estimate, unbounded interval) starts it over', () => {
    const unusable = [
      { smoothed: estimate(100), skipped: true },
      { smoothed: { ...estimate(100), trusted: false } },
      { smoothed: null },
      { smoothed: { ...estimate(100), bSimple: null } },
      { smoothed: { ...estimate(100), interval: { low: 40, high: Infinity } } },
    ];
    for (const bad of unusable) {
      const r = fresh();
      feedN(r, 9);
      r.feed(bad.smoothed, bad);
      feedN(r, 9);
      expect(r.recommendations, JSON.stringify(bad)).toEqual([]);
      feedN(r, 1);
      expect(r.recommendations.map((x) => x.step)).toEqual([20]);
    }
  });

  it('a temperature change, or a new smoothing regime, is a transient that never counts', () => {
    const change = { fromLr: 0.1, toLr: 0.01, fromBatch: 32, toBatch: 32 };
    const a = fresh();
    feedN(a, 9);
    a.feed(estimate(100), { temperatureChange: change, regimeStartStep: 10 });
    feedN(a, 9, { regimeStartStep: 10 });
    expect(a.recommendations).toEqual([]);
    feedN(a, 1, { regimeStartStep: 10 });
    expect(a.recommendations.map((x) => x.step)).toEqual([20]);
    // The regime moved without the change being flagged on a step we saw (that step was lost).
    const b = fresh();
    feedN(b, 9);
    feedN(b, 10, { regimeStartStep: 7 });
    expect(b.recommendations).toEqual([]);
    feedN(b, 1, { regimeStartStep: 7 });
    expect(b.recommendations.map((x) => x.step)).toEqual([20]);
  });

  it('direction flips restart the count', () => {
    const r = fresh();
    feedN(r, 9);
    r.feed(estimate(32)); // the interval covers 32: a 'hold' step
    feedN(r, 9);
    expect(r.recommendations).toEqual([]);
  });

  it('an unapplied change is not repeated; once the hook applies it, fresh evidence at the new batch', () => {
    const r = fresh();
    feedN(r, 40);
    expect(r.recommendations).toHaveLength(1);
    // The hook applies it now: the step at 64 is the first at the new batch.
    r.accumulationSteps = 4;
    feedN(r, 9);
    expect(r.recommendations).toHaveLength(1);
    feedN(r, 1);
    expect(r.recommendations.map((x) => [x.step, x.action, x.currentGlobalBatch, x.recommendedGlobalBatch, x.sequence])).toEqual([
      [10, 'increase', 32, 64, 1],
      [50, 'increase', 64, 96, 2],
    ]);
  });

  it('the batch moving back and forth without evidence changes nothing by itself', () => {
    const r = fresh();
    feedN(r, 5);
    r.accumulationSteps = 3;
    feedN(r, 5);
    r.accumulationSteps = 2;
    feedN(r, 9);
    expect(r.recommendations).toEqual([]);
  });
});
