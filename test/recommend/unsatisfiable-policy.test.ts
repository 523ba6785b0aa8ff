import { describe, expect, it } from 'vitest';
import { DEFAULT_BATCH_POLICY, validateBatchPolicy } from '../../src/recommend/batch-policy.js';
import type { BatchPolicy } from '../../src/types.js';
import { ScriptedRun, runInfo } from './fixtures.js';

const policy = (p: Partial<BatchPolicy>): BatchPolicy => ({ ...DEFAULT_BATCH_POLICY, ...p });

describe('validateBatchPolicy', () => {
  it('names the first bad value', () => {
    expect(() => validateBatchPolicy(policy({ minBatch: 200, maxBatch: 100 }))).toThrow('max batch 100 is below min batch 200: no batch satisfies both');
    expect(() => validateBatchPolicy(policy({ minBatch: 0 }))).toThrow('min batch must be a whole number ≥ 1, got 0');
    expect(() => validateBatchPolicy(policy({ maxBatch: 10.5 }))).toThrow('max batch must be a whole number ≥ 1, got 10.5');
    expect(() => validateBatchPolicy(policy({ maxMicroBatch: -1 }))).toThrow('max micro-batch must be a whole number ≥ 1, got -1');
    expect(() => validateBatchPolicy(policy({ maxFactor: 1 }))).toThrow('max factor per change must be a finite number above 1, got 1');
    expect(() => validateBatchPolicy(policy({ maxFactor: Number.NaN }))).toThrow('got NaN');
    expect(() => validateBatchPolicy(policy({ window: 0 }))).toThrow('window must be a whole number ≥ 1, got 0');
    expect(() => validateBatchPolicy(policy({ objective: 'fast' as never }))).toThrow('objective must be one of balanced, time, compute, got fast');
    expect(() => validateBatchPolicy(DEFAULT_BATCH_POLICY)).not.toThrow();
  });
});

describe('a policy the run cannot satisfy', () => {
  it('one hold at the first step that names the granularity above max batch, and nothing more', () => {
    const r = new ScriptedRun(runInfo({ worldSize: 8, policy: { maxBatch: 64 } }), { microBatch: 16, accumulationSteps: 1 });
    r.follow(30, () => 500);
    expect(r.recommendations).toHaveLength(1);
    expect(r.recommendations[0]).toMatchObject({
      action: 'hold',
      step: 1,
      sequence: 1,
      currentGlobalBatch: 128,
      recommendedGlobalBatch: 128,
      confidence: 0,
      reason: 'Cannot follow the noise scale: the smallest batch this run can take, 16 per micro-batch × 8 ranks = 128, is above max batch 64.',
    });
  });

  it('one rank counts the two micro-batches it needs to measure', () => {
    const r = new ScriptedRun(runInfo({ policy: { maxBatch: 24 } }), { microBatch: 16, accumulationSteps: 2 });
    r.follow(5, () => 500);
    expect(r.recommendations.map((x) => x.reason)).toEqual([
      'Cannot follow the noise scale: the smallest batch this run can take, 16 per micro-batch × 2 accumulation steps (one rank needs two to measure) = 32, is above max batch 24.',
    ]);
  });

  it('bounds between two multiples of the granularity', () => {
    const r = new ScriptedRun(runInfo({ worldSize: 8, policy: { minBatch: 130, maxBatch: 200 } }), { microBatch: 16, accumulationSteps: 1 });
    r.follow(5, () => 500);
    expect(r.recommendations.map((x) => x.reason)).toEqual([
      'Cannot follow the noise scale: no batch from min batch 130 to max batch 200 is a multiple of 128 (16 per micro-batch × 8 ranks).',
    ]);
  });

  it('a merged policy that is invalid (the run’s min batch above the sidecar’s max) says so, before any estimate exists', () => {
    const r = new ScriptedRun(runInfo({ policy: { minBatch: 500 } }), { microBatch: 16, accumulationSteps: 2 }, true, policy({ maxBatch: 256 }));
    r.feed(null);
    r.feed(null);
    expect(r.recommendations).toHaveLength(1);
    const [hold] = r.recommendations;
    expect(hold!.reason).toBe('Cannot follow the noise scale: max batch 256 is below min batch 500: no batch satisfies both.');
    expect(hold!.noiseScale).toBeNaN();
    expect(hold!.interval).toEqual({ low: 0, high: Infinity });
  });

  it('re-emits only when the problem changes, and follows the noise scale once it is gone', () => {
    const run = runInfo({ worldSize: 8, policy: { maxBatch: 64 } });
    const r = new ScriptedRun(run, { microBatch: 16, accumulationSteps: 1 });
    r.follow(3, () => 500);
    // The hook halves its micro-batch: still too large, a different problem.
    r.microBatch = 12;
    r.follow(3, () => 500);
    expect(r.recommendations.map((x) => x.reason)).toEqual([
      'Cannot follow the noise scale: the smallest batch this run can take, 16 per micro-batch × 8 ranks = 128, is above max batch 64.',
      'Cannot follow the noise scale: the smallest batch this run can take, 12 per micro-batch × 8 ranks = 96, is above max batch 64.',
    ]);
    // Now 8 per micro-batch fits exactly: ordinary advice after a full window.
    r.microBatch = 8;
    r.follow(10, () => 64);
    expect(r.recommendations).toHaveLength(3);
    expect(r.recommendations[2]).toMatchObject({ action: 'hold', sequence: 3, step: 16, reason: expect.stringMatching(/^The current batch 64 lies inside/) });
  });

  it('with a max micro-batch the run can shrink its micro-batch, so only the world size bounds it', () => {
    const r = new ScriptedRun(runInfo({ worldSize: 8, policy: { maxBatch: 64, maxMicroBatch: 8 } }), { microBatch: 16, accumulationSteps: 1 });
    r.follow(10, () => 40);
    expect(r.recommendations).toHaveLength(1);
    // B_simple ≈ 40 below 128: down to 64, within max batch, as 8 per micro-batch × 8 ranks.
    expect(r.recommendations[0]).toMatchObject({ action: 'decrease', recommendedGlobalBatch: 64, microBatch: 8, accumulationSteps: 1 });
    const tooSmall = new ScriptedRun(runInfo({ worldSize: 8, policy: { maxBatch: 4, maxMicroBatch: 8 } }), { microBatch: 16, accumulationSteps: 1 });
    tooSmall.follow(2, () => 40);
    expect(tooSmall.recommendations.map((x) => x.reason)).toEqual([
      'Cannot follow the noise scale: the smallest batch this run can take, 1 per micro-batch × 8 ranks = 8, is above max batch 4.',
    ]);
  });
});
