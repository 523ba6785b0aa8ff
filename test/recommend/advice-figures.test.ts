import { describe, expect, it } from 'vitest';
import { recommendationConfidence } from '../../src/recommend/confidence.js';
import { learningRateHint } from '../../src/recommend/learning-rate-hint.js';
import { tradeOff } from '../../src/recommend/trade-off.js';
import type { Estimate } from '../../src/types.js';
import { ScriptedRun, estimate, runInfo } from './fixtures.js';

describe('trade-off factors (McCandlish et al. 2018)', () => {
  it('match hand-computed values', () => {
    // B_noise 212, 64 → 128: steps (1 + 212/128)/(1 + 212/64) = 2.65625/4.3125; examples (1 + 128/212)/(1 + 64/212) = 340/276.
    const up = tradeOff(212, 64, 128);
    expect(up.stepsFactor).toBeCloseTo(2.65625 / 4.3125, 12);
    expect(up.examplesFactor).toBeCloseTo(340 / 276, 12);
    // At the knee from far below: B 10 → B_noise 100 cuts steps from 11 to 2 (× 2/11) for 2/1.1 the examples.
    const knee = tradeOff(100, 10, 100);
    expect(knee.stepsFactor).toBeCloseTo(2 / 11, 12);
    expect(knee.examplesFactor).toBeCloseTo(2 / 1.1, 12);
    // Down from 400 to the knee at 100: steps (1 + 1)/(1 + 0.25) = 1.6, examples (1 + 1)/(1 + 4) = 0.4.
    const down = tradeOff(100, 400, 100);
    expect(down.stepsFactor).toBeCloseTo(1.6, 12);
    expect(down.examplesFactor).toBeCloseTo(0.4, 12);
    expect(tradeOff(100, 64, 64)).toEqual({ stepsFactor: 1, examplesFactor: 1 });
  });

  it('reach the recommendation and its reason', () => {
    const r = new ScriptedRun(runInfo(), { microBatch: 16, accumulationSteps: 4 });
    r.follow(10, () => 212);
    const [rec] = r.recommendations;
    expect(rec).toMatchObject({ action: 'increase', currentGlobalBatch: 64, recommendedGlobalBatch: 128, noiseScale: 212, targetBatch: 212 });
    expect(rec!.stepsFactor).toBeCloseTo(2.65625 / 4.3125, 12);
    expect(rec!.examplesFactor).toBeCloseTo(340 / 276, 12);
    expect(rec!.reason).toBe(
      `B_simple ≈ 212 (interval ${Math.round(rec!.interval.low)}–${Math.round(rec!.interval.high)}) has stayed above the current batch 64 for 10 measured steps: ` +
        '128 (capped at 2× per change) cuts optimizer steps to the same loss by 38% for 23% more examples.',
    );
  });
});

describe('learning-rate hint (a heuristic, by optimizer)', () => {
  it('linear for the SGD family', () => {
    for (const optimizer of ['SGD', 'ASGD', 'FusedSGD', 'sgd_momentum', 'LARS']) {
      const hint = learningRateHint(optimizer, 0.1, 64, 128);
      expect(hint, optimizer).toMatchObject({ rule: 'linear', currentLr: 0.1 });
      expect(hint!.suggestedLr).toBeCloseTo(0.2, 15);
      expect(hint!.note).toMatch(/heuristic.*Goyal et al\. 2017/);
    }
    expect(learningRateHint('SGD', 0.1, 128, 32)!.suggestedLr).toBeCloseTo(0.025, 15);
  });

  it('square root for adaptive optimizers', () => {
    for (const optimizer of ['Adam', 'AdamW', 'Adamax', 'NAdam', 'RAdam', 'RMSprop', 'Adagrad', 'Adadelta', 'Adafactor', 'LAMB', 'Lion', 'SparseAdam']) {
      const hint = learningRateHint(optimizer, 1e-3, 64, 256);
      expect(hint, optimizer).toMatchObject({ rule: 'sqrt' });
      expect(hint!.suggestedLr).toBeCloseTo(2e-3, 15);
      expect(hint!.note).toMatch(/heuristic.*Malladi et al\. 2022/);
      expect(hint!.note).toContain(optimizer);
    }
  });

  it('square root, saying so, when the optimizer is unknown or unrecognised', () => {
    expect(learningRateHint(null, 1e-3, 64, 256)).toMatchObject({ rule: 'sqrt', note: expect.stringContaining('the optimizer is unknown') });
    expect(learningRateHint('Muon', 1e-3, 64, 256)).toMatchObject({ rule: 'sqrt', note: expect.stringContaining('Muon is not one we recognise') });
  });

  it('none without a usable learning rate or a change', () => {
    expect(learningRateHint('SGD', null, 64, 128)).toBeNull();
    expect(learningRateHint('SGD', Number.NaN, 64, 128)).toBeNull();
    expect(learningRateHint('SGD', 0, 64, 128)).toBeNull();
    expect(learningRateHint('SGD', 0.1, 64, 64)).toBeNull();
  });

  it('rides on changes only', () => {
    const r = new ScriptedRun(runInfo({ optimizer: 'AdamW' }), { microBatch: 16, accumulationSteps: 4 });
    r.follow(30, () => 100);
    const [up, hold] = r.recommendations;
    expect(up!.lrHint).toMatchObject({ rule: 'sqrt', currentLr: 0.1 });
    expect(up!.lrHint!.suggestedLr).toBeCloseTo(0.1 * Math.sqrt(96 / 64), 15);
    expect(hold).toMatchObject({ action: 'hold', lrHint: null });
    const noLr = new ScriptedRun(runInfo(), { microBatch: 16, accumulationSteps: 4 });
    for (let i = 0; i < 10; i++) noLr.feed(estimate(100), { lr: null });
    expect(noLr.recommendations[0]).toMatchObject({ action: 'increase', lrHint: null });
  });
});

describe('confidence', () => {
  // tr(Σ) with standard deviation 10, |G|² = 1 known exactly, 20 degrees of freedom: t = (T − B)/10.
  const withSpread = (traceSigma: number): Estimate => ({
    gradSqNorm: 1,
    traceSigma,
    bSimple: traceSigma,
    interval: { low: traceSigma - 20.86, high: traceSigma + 20.86 },
    trusted: true,
    spread: { varGradSqNorm: 0, varTraceSigma: 100, covariance: 0, df: 20 },
  });

  it('Fieller t test: B_noise two standard errors above B gives the t quantile’s probability', () => {
    // t_{0.975, 20} = 2.086.
    const e = withSpread(120.86);
    expect(recommendationConfidence(e, 1, 100, 'increase')).toBeCloseTo(0.975, 4);
    expect(recommendationConfidence(e, 1, 100, 'hold')).toBeCloseTo(0.05, 4);
    expect(recommendationConfidence(e, 1, 100, 'decrease')).toBeCloseTo(0.025, 4);
    // The objective scales the hypothesis: 4 × B_noise = 400 against B = 4 × 100.
    expect(recommendationConfidence(e, 4, 400, 'increase')).toBeCloseTo(0.975, 4);
  });

  it('without the spread: the interval read as a 95% one on a log scale', () => {
    // Interval 100–400 around 200: the half-width ln 2 is 1.96 standard errors; B = 100 sits at the lower end.
    const e: Estimate = { gradSqNorm: 1, traceSigma: 200, bSimple: 200, interval: { low: 100, high: 400 }, trusted: true };
    expect(recommendationConfidence(e, 1, 100, 'increase')).toBeCloseTo(0.975, 4);
    expect(recommendationConfidence(e, 1, 400, 'decrease')).toBeCloseTo(0.975, 4);
    expect(recommendationConfidence(e, 1, 200, 'hold')).toBeCloseTo(1, 6);
    expect(recommendationConfidence(e, 1, 100, 'hold')).toBeCloseTo(0.05, 4);
    // A spread with no usable variance falls back the same way.
    const degenerate: Estimate = { ...e, spread: { varGradSqNorm: 0, varTraceSigma: 0, covariance: 0, df: 20 } };
    expect(recommendationConfidence(degenerate, 1, 100, 'increase')).toBeCloseTo(0.975, 4);
  });

  for (const [path, make] of [
    ['Fieller', (b: number) => estimate(b, { relSd: 0.1, df: 25 })],
    ['interval', (b: number) => estimate(b, { relSd: 0.1, df: 25, spread: false })],
  ] as const) {
    it(`grows with the distance of the batch from the interval (${path})`, () => {
      const e = make(200);
      const batches = [190, 170, 150, 120, 100, 80, 50];
      const change = batches.map((B) => recommendationConfidence(e, 1, B, 'increase'));
      const hold = batches.map((B) => recommendationConfidence(e, 1, B, 'hold'));
      for (let i = 1; i < batches.length; i++) {
        expect(change[i]!).toBeGreaterThanOrEqual(change[i - 1]!);
        expect(hold[i]!).toBeLessThanOrEqual(hold[i - 1]!);
      }
      expect(change[0]!).toBeLessThan(0.75);
      expect(change.at(-1)!).toBeGreaterThan(0.99);
      expect(hold[0]!).toBeGreaterThan(0.5);
      expect(hold.at(-1)!).toBeLessThan(0.01);
      // Both ends in [0, 1].
      for (const p of [...change, ...hold]) expect(p >= 0 && p <= 1).toBe(true);
    });
  }
});
