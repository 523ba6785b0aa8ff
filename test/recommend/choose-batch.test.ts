import { describe, expect, it } from 'vitest';
import type { BatchFacts } from '../../src/recommend/batch-facts.js';
import { DEFAULT_BATCH_POLICY } from '../../src/recommend/batch-policy.js';
import { chooseBatch } from '../../src/recommend/choose-batch.js';
import { nearestReachableBatch } from '../../src/recommend/granularity.js';
import type { BatchPolicy } from '../../src/types.js';

const facts = (microBatch: number, accumulationSteps: number, worldSize: number): BatchFacts => ({
  globalBatch: microBatch * accumulationSteps * worldSize,
  worldSize,
  microBatch,
  accumulationSteps,
  minAccumulation: worldSize === 1 ? 2 : 1,
});
const policy = (p: Partial<BatchPolicy> = {}): BatchPolicy => ({ ...DEFAULT_BATCH_POLICY, ...p });

describe('rounding to the granularity', () => {
  it('one rank: the micro-batch stays, accumulation moves, and never below two micro-batches', () => {
    // 16 per micro-batch, 2 accumulation steps: B = 32.
    expect(chooseBatch(50, facts(16, 2, 1), policy())).toMatchObject({ globalBatch: 48, microBatch: 16, accumulationSteps: 3, limit: null });
    expect(chooseBatch(57, facts(16, 2, 1), policy())).toMatchObject({ globalBatch: 64, accumulationSteps: 4 });
    // B = 64 → 20 is capped at 32 = 2 × 16: one micro-batch would leave one rank without a second batch scale.
    expect(chooseBatch(20, facts(16, 4, 1), policy())).toMatchObject({ globalBatch: 32, accumulationSteps: 2, limit: 'max factor' });
    expect(chooseBatch(36, facts(16, 4, 1), policy())).toMatchObject({ globalBatch: 32, accumulationSteps: 2, limit: null });
  });

  it('four ranks: steps of micro-batch × 4, down to one accumulation step', () => {
    // 8 per micro-batch × 4 ranks × 4 steps = 128.
    expect(chooseBatch(200, facts(8, 4, 4), policy())).toMatchObject({ globalBatch: 192, microBatch: 8, accumulationSteps: 6 });
    expect(chooseBatch(70, facts(8, 4, 4), policy())).toMatchObject({ globalBatch: 64, accumulationSteps: 2 });
    expect(chooseBatch(20, facts(8, 2, 4), policy())).toMatchObject({ globalBatch: 32, accumulationSteps: 1, limit: 'max factor' });
  });

  it('with a max micro-batch: the fewest accumulation steps, then the micro-batch nearest the target', () => {
    // Larger than the current 16: one rank can go to 2 × 50 = 100 exactly.
    expect(nearestReachableBatch(100, 1, Infinity, facts(16, 2, 1), 64)).toEqual({ globalBatch: 100, microBatch: 50, accumulationSteps: 2 });
    // Beyond 2 × 64 it takes 3 accumulation steps: 3 × 43 = 129 is nearest 130.
    expect(nearestReachableBatch(130, 1, Infinity, facts(16, 2, 1), 64)).toEqual({ globalBatch: 129, microBatch: 43, accumulationSteps: 3 });
    // Four ranks, max 32 per micro-batch: 600 → 5 steps × 30 × 4.
    expect(nearestReachableBatch(600, 1, Infinity, facts(16, 1, 4), 32)).toEqual({ globalBatch: 600, microBatch: 30, accumulationSteps: 5 });
    // Through chooseBatch, the cap applies first: 64 × 2 = 128 as 2 steps × 64.
    expect(chooseBatch(500, facts(16, 4, 1), policy({ maxMicroBatch: 64 }))).toMatchObject({ globalBatch: 128, microBatch: 64, accumulationSteps: 2, limit: 'max factor' });
  });

  it('bounds: min and max batch hold the target, and the result stays a batch the run can take', () => {
    expect(chooseBatch(1000, facts(16, 2, 1), policy({ maxBatch: 50 }))).toMatchObject({ globalBatch: 48, accumulationSteps: 3, limit: 'max batch' });
    expect(chooseBatch(10, facts(16, 8, 1), policy({ minBatch: 100 }))).toMatchObject({ globalBatch: 112, accumulationSteps: 7, limit: 'min batch' });
    // A current batch above max batch comes down to it even though that is more than 2× at once: bounds win.
    expect(chooseBatch(5000, facts(16, 64, 1), policy({ maxBatch: 200 }))).toMatchObject({ globalBatch: 192, limit: 'max batch' });
    // With a max micro-batch, narrow bounds that no coarse step fits still find a batch.
    expect(nearestReachableBatch(101, 101, 101, facts(16, 2, 1), 64)).toEqual({ globalBatch: 101, microBatch: 1, accumulationSteps: 101 });
    expect(nearestReachableBatch(100, 101, 101, facts(16, 2, 1), null)).toBeNull();
  });

  it('never beyond the per-change factor after rounding, unless the next step of the granularity already is', () => {
    // 16 × 3 = 48 → target 80 capped at 72 (1.5×); 64 is within, 80 would not be.
    expect(chooseBatch(80, facts(16, 3, 1), policy({ maxFactor: 1.5 }))).toMatchObject({ globalBatch: 64, limit: 'max factor' });
    // 64 per micro-batch on 4 ranks, B = 256: 1.5× allows 384 = 64 × 4 × 1.5 — not a batch this run can take;
    // the next is 512, a single step of the granularity, so it is taken (and labelled).
    expect(chooseBatch(1000, facts(64, 1, 4), policy({ maxFactor: 1.5 }))).toMatchObject({ globalBatch: 512, accumulationSteps: 2, limit: 'single step' });
    // Downwards the same: 512 → (cap 341) → 256 is one step.
    expect(chooseBatch(10, facts(64, 2, 4), policy({ maxFactor: 1.5 }))).toMatchObject({ globalBatch: 256, accumulationSteps: 1, limit: 'single step' });
    // Rounding that stays nearer the current batch is no move at all: the caller holds.
    expect(chooseBatch(150, facts(64, 2, 1), policy())).toMatchObject({ globalBatch: 128 });
  });
});
