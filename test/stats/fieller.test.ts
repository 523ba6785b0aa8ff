import { describe, expect, it } from 'vitest';
import { fiellerInterval } from '../../src/stats/fieller.js';

describe('fiellerInterval', () => {
  it('with an exact denominator is the numerator’s interval divided by it', () => {
    const iv = fiellerInterval(200, 4, 25, 0, 0, 2);
    expect(iv.low).toBeCloseTo((200 - 2 * 5) / 4, 12);
    expect(iv.high).toBeCloseTo((200 + 2 * 5) / 4, 12);
  });

  it('solves the quadratic: both ends satisfy (num − ρ·den)² = q·Var(num − ρ·den)', () => {
    const [num, den, vn, vd, c, z] = [300, 2, 400, 0.09, 3, 1.96];
    const iv = fiellerInterval(num, den, vn, vd, c, z);
    for (const rho of [iv.low, iv.high]) {
      expect((num - rho * den) ** 2).toBeCloseTo(z * z * (vn - 2 * rho * c + rho * rho * vd), 6);
    }
    // Skewed to the right of the point estimate, as a ratio's interval should be.
    expect(iv.high - num / den).toBeGreaterThan(num / den - iv.low);
  });

  it('is close to the delta method when both parts are precise', () => {
    const [num, den, vn, vd, c, z] = [100, 1, 1, 1e-4, 0.002, 1.96];
    const iv = fiellerInterval(num, den, vn, vd, c, z);
    const ratio = num / den;
    const deltaSd = Math.sqrt(vn / den ** 2 + (ratio ** 2 * vd) / den ** 2 - (2 * ratio * c) / den ** 2);
    expect(iv.low).toBeCloseTo(ratio - z * deltaSd, 1);
    expect(iv.high).toBeCloseTo(ratio + z * deltaSd, 1);
  });

  it('is unbounded (“not yet”) when the denominator is not significantly above zero', () => {
    const iv = fiellerInterval(100, 0.1, 25, 0.01, 0, 1.96);
    expect(iv.high).toBe(Number.POSITIVE_INFINITY);
    // The numerator is clearly positive, so small ratios are still rejected: low is the boundary root.
    expect(iv.low).toBeGreaterThan(100);
    expect((100 - iv.low * 0.1) ** 2).toBeCloseTo(1.96 ** 2 * (25 + iv.low ** 2 * 0.01), 6);
    expect(fiellerInterval(1, -5, 1, 1, 0, 1.96)).toEqual({ low: 0, high: Number.POSITIVE_INFINITY });
    expect(fiellerInterval(1, 1, Number.POSITIVE_INFINITY, 1, 0, 1.96)).toEqual({ low: 0, high: Number.POSITIVE_INFINITY });
  });

  it('never reports a negative B_simple bound', () => {
    const iv = fiellerInterval(1, 1, 4, 0.01, 0, 1.96);
    expect(iv.low).toBe(0);
    expect(iv.high).toBeGreaterThan(1);
  });
});
