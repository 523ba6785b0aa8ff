import { from, lastValueFrom, Subject, toArray } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { DEFAULT_BATCH_POLICY } from '../../src/recommend/batch-policy.js';
import { type PolicyInput, recommendBatchSize } from '../../src/recommend/recommend-batch-size.js';
import { RunPolicy } from '../../src/recommend/run-policy.js';
import type { Recommendation, RunInfo, StepStats } from '../../src/types.js';
import { estimate, runInfo, stepStats } from './fixtures.js';

const run = (name: string, worldSize = 1, overrides: Partial<RunInfo> = {}) => runInfo({ run: name, worldSize, ...overrides });
const steps = (name: string, n: number, bSimple: number, microBatch = 16, accumulationSteps = 2, ranks = 1, first = 1): StepStats[] =>
  Array.from({ length: n }, (_, i) => stepStats({ run: name, step: first + i, microBatch, accumulationSteps, ranks, smoothed: estimate(bSimple) }));

describe('recommendBatchSize', () => {
  it('keeps runs apart: each its own streak, batch and sequence from 1', async () => {
    const a = run('a');
    const b = run('b', 4, { optimizer: 'Adam' });
    const aSteps = steps('a', 30, 100);
    const bSteps = steps('b', 30, 8, 8, 2, 4);
    const inputs: PolicyInput[] = [];
    aSteps.forEach((s, i) => inputs.push({ stats: s, run: a }, { stats: bSteps[i]!, run: b }));
    const recs = await lastValueFrom(from(inputs).pipe(recommendBatchSize(DEFAULT_BATCH_POLICY), toArray()));
    const summary = (r: Recommendation) => [r.run, r.step, r.sequence, r.action, r.currentGlobalBatch, r.recommendedGlobalBatch];
    // a: 32 → 64 at step 10 (not applied, so not repeated). b: 8 × 2 × 4 ranks = 64, B_simple 8 → down to 32 (2×), not applied.
    expect(recs.map(summary)).toEqual([
      ['a', 10, 1, 'increase', 32, 64],
      ['b', 10, 1, 'decrease', 64, 32],
    ]);
    expect(recs[1]!.lrHint).toMatchObject({ rule: 'sqrt' });
  });

  it('numbers each run’s advice 1, 2, 3 … as it changes', async () => {
    const r = run('seq');
    const input = [...steps('seq', 10, 100, 16, 2), ...steps('seq', 10, 100, 16, 4, 1, 11), ...steps('seq', 10, 100, 16, 6, 1, 21)];
    const recs = await lastValueFrom(from(input.map((stats) => ({ stats, run: r }))).pipe(recommendBatchSize(DEFAULT_BATCH_POLICY), toArray()));
    expect(recs.map((x) => [x.sequence, x.step, x.action, x.currentGlobalBatch, x.recommendedGlobalBatch])).toEqual([
      [1, 10, 'increase', 32, 64],
      [2, 20, 'increase', 64, 96],
      [3, 30, 'hold', 96, 96],
    ]);
    expect(recs.every((x) => typeof x.unixMs === 'number' && x.unixMs > 0)).toBe(true);
  });

  it('each subscription starts from fresh state', async () => {
    const r = run('fresh');
    const op$ = from(steps('fresh', 10, 100).map((stats) => ({ stats, run: r }))).pipe(recommendBatchSize(DEFAULT_BATCH_POLICY), toArray());
    expect((await lastValueFrom(op$)).map((x) => x.sequence)).toEqual([1]);
    expect((await lastValueFrom(op$)).map((x) => x.sequence)).toEqual([1]);
  });

  it('odd inputs never error the stream, and the other runs’ advice goes on', () => {
    const input$ = new Subject<PolicyInput>();
    const out: Recommendation[] = [];
    let error: unknown = null;
    let completed = false;
    input$.pipe(recommendBatchSize(DEFAULT_BATCH_POLICY)).subscribe({ next: (r) => out.push(r), error: (e) => (error = e), complete: () => (completed = true) });
    const good = run('good');
    const odd = run('odd');
    const base = stepStats({ run: 'odd', step: 1, microBatch: 16, accumulationSteps: 2, smoothed: estimate(100) });
    const oddInputs: unknown[] = [
      { stats: base, run: undefined },
      { stats: { ...base, lr: Number.NaN }, run: odd },
      { stats: { ...base, microBatches: 0 }, run: odd },
      { stats: { ...base, ranks: 0 }, run: odd },
      { stats: { ...base, globalBatch: Number.NaN }, run: odd },
      { stats: { ...base, globalBatch: -32 }, run: odd },
      { stats: base, run: { ...odd, worldSize: 0 } },
      { stats: base, run: { ...odd, policy: undefined, optimizer: undefined } },
      { stats: base, run: { ...odd, policy: { maxFactor: Number.NaN, objective: 'fast' } } },
      { stats: { ...base, smoothed: { ...estimate(100), bSimple: Number.NaN } }, run: odd },
      { stats: { ...base, smoothed: { ...estimate(100), interval: { low: Number.NaN, high: 5 } } }, run: odd },
      { stats: { ...base, smoothed: { ...estimate(100), spread: { varGradSqNorm: Number.NaN, varTraceSigma: -1, covariance: 0, df: 0 } } }, run: odd },
      { stats: { ...base, temperatureChange: undefined, regimeStartStep: undefined }, run: odd },
      { stats: { ...base, run: undefined }, run: odd },
      { stats: null, run: odd },
      null,
      undefined,
    ];
    for (let i = 0; i < 10; i++) {
      input$.next({ stats: stepStats({ run: 'good', step: i + 1, microBatch: 16, accumulationSteps: 2, smoothed: estimate(100) }), run: good });
      for (const o of oddInputs) input$.next(o as PolicyInput);
    }
    input$.complete();
    expect(error).toBeNull();
    expect(completed).toBe(true);
    const goodRecs = out.filter((r) => r.run === 'good');
    expect(goodRecs.map((r) => [r.step, r.action, r.recommendedGlobalBatch])).toEqual([[10, 'increase', 64]]);
    // Whatever the odd run got is a well-formed recommendation.
    for (const r of out) {
      expect(['hold', 'increase', 'decrease']).toContain(r.action);
      expect(Number.isFinite(r.recommendedGlobalBatch) && r.recommendedGlobalBatch > 0).toBe(true);
      expect(r.confidence >= 0 && r.confidence <= 1).toBe(true);
      expect(r.reason.length).toBeGreaterThan(0);
    }
  });

  it('the odd inputs a producer could send do not throw inside the policy itself (the operator’s catch is a last resort)', () => {
    const odd = run('odd');
    const base = stepStats({ run: 'odd', step: 1, microBatch: 16, accumulationSteps: 2, smoothed: estimate(100) });
    const cases: [string, StepStats, RunInfo | undefined][] = [
      ['no run', base, undefined],
      ['NaN lr', { ...base, lr: Number.NaN }, odd],
      ['0 micro-batches', { ...base, microBatches: 0 }, odd],
      ['0 ranks', { ...base, ranks: 0 }, odd],
      ['infinite batch', { ...base, globalBatch: Infinity }, odd],
      ['world size 0', base, { ...odd, worldSize: 0 }],
      ['policy and optimizer missing', base, { ...odd, policy: undefined as never, optimizer: undefined as never }],
      ['invalid policy', base, { ...odd, policy: { maxFactor: Number.NaN, objective: 'fast' as never } }],
      ['NaN B_simple', { ...base, smoothed: { ...estimate(100), bSimple: Number.NaN } }, odd],
      ['NaN spread', { ...base, smoothed: { ...estimate(100), spread: { varGradSqNorm: Number.NaN, varTraceSigma: -1, covariance: 0, df: 0 } } }, odd],
      ['inverted interval', { ...base, smoothed: { ...estimate(100), interval: { low: 200, high: 50 } } }, odd],
      ['huge B_simple', { ...base, smoothed: estimate(1e300) }, odd],
    ];
    for (const [name, stats, info] of cases) {
      const policy = new RunPolicy({ ...DEFAULT_BATCH_POLICY, window: 1 });
      expect(() => {
        for (let i = 0; i < 3; i++) policy.observe({ ...stats, step: i + 1 }, info);
      }, name).not.toThrow();
    }
  });
});
