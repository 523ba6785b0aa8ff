import { describe, expect, it } from 'vitest';
import { StepAssembler, STEP_LIMITS } from '../../src/ingest/step-assembler.js';
import { end, layout, shard } from './fixtures.js';

describe('StepAssembler', () => {
  it('completes a step only when every rank of the run has ended it', () => {
    const a = new StepAssembler(layout(2));
    for (const rank of [0, 1]) for (const i of [0, 1]) a.addShard(rank, shard(0, i));
    expect(a.endStep(0, end(0, 2, { reducedSqNorms: [2, 3] })).kind).toBe('waiting-for-ranks');
    const outcome = a.endStep(1, end(0, 2, { reducedSqNorms: [2, 3] }));
    expect(outcome.kind).toBe('completed');
    if (outcome.kind !== 'completed') return;
    expect(outcome.step.ranks.map((r) => r.rank)).toEqual([0, 1]);
    expect(outcome.step.globalExamples).toBe(32);
    expect(outcome.step.ranks[0]?.reducedSqNorms).toEqual([2, 3]);
    expect(outcome.step.lr).toBe(0.1);
  });

  it('leaves its state untouched when it refuses a message', () => {
    const a = new StepAssembler(layout());
    a.addShard(0, shard(0, 0));
    expect(() => a.addShard(0, shard(0, 1, [1, Number.NaN]))).toThrow(/is NaN/);
    expect(() => a.endStep(0, end(0, 2, { accumulatedSqNorms: [1] }))).toThrow(/has 1 values/);
    expect(() => a.endStep(0, end(0, 1, { localExamples: 9 }))).toThrow(/local_examples 9 ≠ 8/);
    a.addShard(0, shard(0, 1));
    expect(a.endStep(0, end(0, 2)).kind).toBe('completed');
    expect(a.takeAbandoned()).toBe(0);
  });

  it('bounds the steps a rank may hold open, giving up the oldest', () => {
    const a = new StepAssembler(layout());
    for (let step = 0; step <= STEP_LIMITS.openStepsPerRank; step++) a.addShard(0, shard(step, 0));
    expect(a.takeAbandoned()).toBe(1);
    // Ending the newest step abandons every older open one.
    expect(a.endStep(0, end(STEP_LIMITS.openStepsPerRank, 1)).kind).toBe('completed');
    expect(a.takeAbandoned()).toBe(STEP_LIMITS.openStepsPerRank - 1);
  });

  it('gives up a step some ranks never ended after the partial-step timeout, once, and forgets it', () => {
    const a = new StepAssembler(layout(2));
    for (const i of [0, 1]) a.addShard(0, shard(3, i));
    expect(a.endStep(0, end(3, 2)).kind).toBe('waiting-for-ranks');
    expect(a.expirePartial(Date.now(), 60_000)).toEqual([]); // not old enough
    const [expired, ...rest] = a.expirePartial(Date.now() + 60_000, 30_000);
    expect(rest).toEqual([]);
    expect(expired?.step).toBe(3);
    expect(expired?.ranks).toEqual([]);
    expect(expired?.skipReason).toBe('partial: rank 1 of 2 never ended step 3 within 30 s — excluded');
    expect(a.takeAbandoned()).toBe(1);
    expect(a.hasPending).toBe(false); // released: reported once only
    expect(a.expirePartial(Date.now() + 120_000, 30_000)).toEqual([]);
  });

  it('bounds the steps waiting for other ranks', () => {
    const a = new StepAssembler(layout(2));
    for (let step = 0; step <= STEP_LIMITS.pendingSteps; step++) {
      a.addShard(0, shard(step, 0));
      expect(a.endStep(0, end(step, 1)).kind).toBe('waiting-for-ranks');
    }
    expect(a.takeAbandoned()).toBe(1);
  });

  it('accepts a skipped step without shards or norms', () => {
    const a = new StepAssembler(layout());
    const outcome = a.endStep(0, end(0, 0, { skipped: true, skipReason: 'inf in a', accumulatedSqNorms: [] }));
    expect(outcome).toMatchObject({ kind: 'completed', step: { skipReason: 'inf in a', ranks: [] } });
  });
});
