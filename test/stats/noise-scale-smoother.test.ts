import { describe, expect, it } from 'vitest';
import { fiellerInterval } from '../../src/stats/fieller.js';
import { MIN_EFFECTIVE_STEPS, NoiseScaleSmoother, rawEstimate } from '../../src/stats/noise-scale-smoother.js';
import { studentTQuantile } from '../../src/stats/quantiles.js';
import { SeededRandom } from '../../src/bench/synthetic-gradients.js';

function steps(rng: SeededRandom, count: number): { gradSqNorm: number; traceSigma: number }[] {
  return Array.from({ length: count }, () => ({
    gradSqNorm: 2 + 0.8 * rng.gaussian(),
    traceSigma: 300 + 60 * rng.gaussian(),
  }));
}

describe('NoiseScaleSmoother', () => {
  it('is a bias-corrected EMA of |G|² and tr(Σ) separately, and divides them', () => {
    const beta = 0.9;
    const data = steps(new SeededRandom(1), 37);
    const smoother = new NoiseScaleSmoother({ beta, confidence: 0.95 });
    data.forEach((e) => smoother.update(e));
    // Plain EMA from zero, then divided by 1 − beta^t.
    let g = 0;
    let t = 0;
    for (const e of data) {
      g = beta * g + (1 - beta) * e.gradSqNorm;
      t = beta * t + (1 - beta) * e.traceSigma;
    }
    const correction = 1 - beta ** data.length;
    const est = smoother.estimate()!;
    expect(est.gradSqNorm).toBeCloseTo(g / correction, 10);
    expect(est.traceSigma).toBeCloseTo(t / correction, 10);
    expect(est.bSimple).toBeCloseTo(t / g, 10);
    const meanOfRatios = data.reduce((s, e) => s + e.traceSigma / e.gradSqNorm, 0) / data.length;
    expect(Math.abs(est.bSimple! - meanOfRatios)).toBeGreaterThan(1);
  });

  it('after one step reports that step and an unbounded, untrusted interval', () => {
    const smoother = new NoiseScaleSmoother({ beta: 0.99, confidence: 0.95 });
    expect(smoother.estimate()).toBeNull();
    smoother.update({ gradSqNorm: 2, traceSigma: 100 });
    expect(smoother.estimate()).toEqual({
      gradSqNorm: 2,
      traceSigma: 100,
      bSimple: 50,
      interval: { low: 0, high: Number.POSITIVE_INFINITY },
      trusted: false,
    });
    expect(smoother.effectiveSteps).toBe(1);
  });

  it('without smoothing (beta 0) never bounds the interval', () => {
    const smoother = new NoiseScaleSmoother({ beta: 0, confidence: 0.9 });
    for (const e of steps(new SeededRandom(2), 20)) smoother.update(e);
    const est = smoother.estimate()!;
    expect(est.interval!.high).toBe(Number.POSITIVE_INFINITY);
    expect(est.trusted).toBe(false);
  });

  it('counts effective steps as 1/Σw² of the normalised weights', () => {
    const beta = 0.95;
    const smoother = new NoiseScaleSmoother({ beta, confidence: 0.9 });
    const data = steps(new SeededRandom(3), 500);
    data.forEach((e, i) => {
      smoother.update(e);
      const t = i + 1;
      const w = Array.from({ length: t }, (_, s) => beta ** (t - 1 - s));
      const sum = w.reduce((a, b) => a + b, 0);
      const expected = 1 / w.reduce((a, b) => a + (b / sum) ** 2, 0);
      if (t % 50 === 1 || t < 5) expect(smoother.effectiveSteps).toBeCloseTo(expected, 9);
    });
    expect(smoother.effectiveSteps).toBeCloseTo((1 + beta) / (1 - beta), 6);
  });

  it('gets its interval from the Bessel-corrected weighted (co)variances, Σw² and Student t', () => {
    const beta = 0.9;
    const confidence = 0.9;
    const data = steps(new SeededRandom(4), 25);
    const smoother = new NoiseScaleSmoother({ beta, confidence });
    data.forEach((e) => smoother.update(e));
    // Direct, non-incremental computation of the same quantities.
    const n = data.length;
    const u = data.map((_, s) => beta ** (n - 1 - s));
    const sum = u.reduce((a, b) => a + b, 0);
    const w = u.map((x) => x / sum);
    const s2 = w.reduce((a, b) => a + b * b, 0);
    const s3 = w.reduce((a, b) => a + b ** 3, 0);
    const g = data.reduce((a, e, i) => a + w[i]! * e.gradSqNorm, 0);
    const t = data.reduce((a, e, i) => a + w[i]! * e.traceSigma, 0);
    const moment = (f: (e: (typeof data)[number]) => number) => data.reduce((a, e, i) => a + w[i]! * f(e), 0) / (1 - s2);
    const varG = s2 * moment((e) => (e.gradSqNorm - g) ** 2);
    const varT = s2 * moment((e) => (e.traceSigma - t) ** 2);
    const cov = s2 * moment((e) => (e.traceSigma - t) * (e.gradSqNorm - g));
    const df = (1 - s2) ** 2 / (s2 - 2 * s3 + s2 * s2);
    const expected = fiellerInterval(t, g, varT, varG, cov, studentTQuantile((1 + confidence) / 2, df));
    const { interval } = smoother.estimate()!;
    expect(interval!.low).toBeCloseTo(expected.low, 8);
    expect(interval!.high).toBeCloseTo(expected.high, 8);
    expect(Number.isFinite(interval!.high)).toBe(true);
  });

  it('attaches the spread behind its interval: Fieller from the spread gives the same interval', () => {
    const confidence = 0.95;
    const smoother = new NoiseScaleSmoother({ beta: 0.95, confidence });
    for (const [i, e] of steps(new SeededRandom(7), 80).entries()) {
      smoother.update(e);
      const est = smoother.estimate()!;
      if (i === 0) {
        // One step says nothing about the spread.
        expect(est.spread).toBeUndefined();
        continue;
      }
      const { varGradSqNorm, varTraceSigma, covariance, df } = est.spread!;
      const quantile = studentTQuantile((1 + confidence) / 2, df);
      expect(fiellerInterval(est.traceSigma, est.gradSqNorm, varTraceSigma, varGradSqNorm, covariance, quantile)).toEqual(est.interval);
      expect(varGradSqNorm).toBeGreaterThan(0);
      expect(varTraceSigma).toBeGreaterThan(0);
    }
    // Steady state: Var(EMA mean) ≈ σ²·(1 − beta)/(1 + beta), σ = 0.8 for |G|² and 60 for tr(Σ); df ≈ the effective steps.
    const { spread } = smoother.estimate()!;
    expect(spread!.varGradSqNorm / ((0.8 ** 2 * 0.05) / 1.95)).toBeGreaterThan(0.5);
    expect(spread!.varGradSqNorm / ((0.8 ** 2 * 0.05) / 1.95)).toBeLessThan(2);
    expect(spread!.varTraceSigma / ((60 ** 2 * 0.05) / 1.95)).toBeGreaterThan(0.5);
    expect(spread!.varTraceSigma / ((60 ** 2 * 0.05) / 1.95)).toBeLessThan(2);
    expect(spread!.df).toBeGreaterThan(0.5 * smoother.effectiveSteps);
    expect(spread!.df).toBeLessThan(smoother.effectiveSteps);
  });

  it('has no spread without smoothing (beta 0), nor on raw estimates', () => {
    const smoother = new NoiseScaleSmoother({ beta: 0, confidence: 0.9 });
    for (const e of steps(new SeededRandom(8), 5)) smoother.update(e);
    expect(smoother.estimate()!.spread).toBeUndefined();
    expect(rawEstimate({ gradSqNorm: 2, traceSigma: 100 }).spread).toBeUndefined();
  });

  it('is trusted only once bounded with enough effective steps', () => {
    const smoother = new NoiseScaleSmoother({ beta: 0.99, confidence: 0.95 });
    const trustedAt: number[] = [];
    steps(new SeededRandom(5), 30).forEach((e, i) => {
      smoother.update(e);
      if (smoother.estimate()!.trusted) trustedAt.push(i + 1);
    });
    expect(trustedAt[0]).toBeGreaterThanOrEqual(MIN_EFFECTIVE_STEPS);
    expect(trustedAt.length).toBeGreaterThan(10);
  });

  it('forgets everything on reset', () => {
    const smoother = new NoiseScaleSmoother({ beta: 0.9, confidence: 0.95 });
    steps(new SeededRandom(6), 10).forEach((e) => smoother.update(e));
    smoother.reset();
    expect(smoother.estimate()).toBeNull();
    expect(smoother.stepsSeen).toBe(0);
    smoother.update({ gradSqNorm: 1, traceSigma: 3 });
    expect(smoother.estimate()!.bSimple).toBe(3);
  });

  it('rejects out-of-range options with a RangeError naming the value', () => {
    expect(() => new NoiseScaleSmoother({ beta: 1, confidence: 0.9 })).toThrow(/beta .*got 1$/);
    expect(() => new NoiseScaleSmoother({ beta: -0.1, confidence: 0.9 })).toThrow(RangeError);
    expect(() => new NoiseScaleSmoother({ beta: Number.NaN, confidence: 0.9 })).toThrow(/beta .*got NaN/);
    expect(() => new NoiseScaleSmoother({ beta: 0.9, confidence: 1 })).toThrow(/confidence .*got 1$/);
    expect(() => new NoiseScaleSmoother({ beta: 0.9, confidence: 0 })).toThrow(RangeError);
  });
});

describe('rawEstimate', () => {
  it('divides a single step and has no interval', () => {
    expect(rawEstimate({ gradSqNorm: 4, traceSigma: 100 })).toEqual({
      gradSqNorm: 4,
      traceSigma: 100,
      bSimple: 25,
      interval: null,
      trusted: false,
    });
  });

  it('has no B_simple when |G|² ≤ 0', () => {
    expect(rawEstimate({ gradSqNorm: -0.3, traceSigma: 100 }).bSimple).toBeNull();
    expect(rawEstimate({ gradSqNorm: 0, traceSigma: 100 }).bSimple).toBeNull();
  });
});
