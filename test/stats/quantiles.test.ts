import { describe, expect, it } from 'vitest';
import { normalQuantile, studentTCdf, studentTQuantile } from '../../src/stats/quantiles.js';

describe('quantiles', () => {
  it('normalQuantile matches tabulated values', () => {
    expect(normalQuantile(0.975)).toBeCloseTo(1.959963985, 7);
    expect(normalQuantile(0.95)).toBeCloseTo(1.644853627, 7);
    expect(normalQuantile(0.5)).toBe(0);
    expect(normalQuantile(0.001)).toBeCloseTo(-3.090232306, 7);
    expect(normalQuantile(1 - 1e-10)).toBeCloseTo(6.361340902, 5);
  });

  it('studentTQuantile matches tabulated and closed-form values', () => {
    expect(studentTQuantile(0.9, 1)).toBeCloseTo(Math.tan(0.4 * Math.PI), 9); // Cauchy
    expect(studentTQuantile(0.975, 2)).toBeCloseTo(0.95 * Math.sqrt(2 / (4 * 0.975 * 0.025)), 9);
    expect(studentTQuantile(0.975, 10)).toBeCloseTo(2.228138852, 8);
    expect(studentTQuantile(0.95, 5)).toBeCloseTo(2.015048373, 8);
    expect(studentTQuantile(0.995, 30)).toBeCloseTo(2.749995654, 8);
    expect(studentTQuantile(0.975, 100)).toBeCloseTo(1.983971519, 8);
    expect(studentTQuantile(0.025, 10)).toBeCloseTo(-2.228138852, 8);
    expect(studentTQuantile(0.975, 1e9)).toBeCloseTo(1.959963985, 6);
  });

  it('handles fractional degrees of freedom consistently with the CDF', () => {
    for (const df of [0.7, 2.5, 18.7, 198.3]) {
      for (const p of [0.9, 0.95, 0.975]) {
        const t = studentTQuantile(p, df);
        expect(studentTCdf(t, df)).toBeCloseTo(p, 10);
      }
    }
    expect(studentTQuantile(0.975, 2.5)).toBeLessThan(studentTQuantile(0.975, 2));
    expect(studentTQuantile(0.975, 2.5)).toBeGreaterThan(studentTQuantile(0.975, 3));
  });

  it('is unbounded with no degrees of freedom', () => {
    expect(studentTQuantile(0.95, 0)).toBe(Number.POSITIVE_INFINITY);
    expect(studentTQuantile(0.05, Number.NaN)).toBe(Number.NEGATIVE_INFINITY);
  });
});
