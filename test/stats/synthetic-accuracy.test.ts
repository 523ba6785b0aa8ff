import { describe, expect, it } from 'vitest';
import { measureSyntheticAccuracy, runSyntheticAccuracy } from '../../src/bench/synthetic-accuracy.js';

describe('bench accuracy (smoke: a few replicates)', () => {
  it('measures every layout at every beta against its own truth', () => {
    const rows = measureSyntheticAccuracy({ replicates: 4, betas: [0.9] });
    expect(rows.map((r) => r.layout)).toHaveLength(8);
    expect(rows.filter((r) => r.layout.includes('per-example'))).toHaveLength(4);
    for (const row of rows) {
      expect(row.steps).toBe(30);
      expect(row.trueBSimple).toBeGreaterThan(50);
      expect(row.medianRelativeError).toBeLessThan(0.3);
      expect(row.coverage).toBeGreaterThanOrEqual(0);
      expect(row.coverage).toBeLessThanOrEqual(1);
    }
  });

  it('prints a table with the truth, the estimate, the error and the coverage', () => {
    const table = runSyntheticAccuracy({ replicates: 2, betas: [0.5] });
    expect(table).toMatch(/true B_simple/);
    expect(table).toMatch(/coverage/);
    expect(table.split('\n').filter((line) => line.includes('(nominal 90.0%)'))).toHaveLength(8);
  });
});
