import type { BatchPolicy, Interval, Objective, Recommendation, RecommendationAction, RunInfo, StepStats } from '../types.js';
import { type BatchFacts, batchFacts } from './batch-facts.js';
import { OBJECTIVE_FACTOR, OBJECTIVES } from './batch-policy.js';
import { chooseBatch, nextBatch } from './choose-batch.js';
import { recommendationConfidence } from './confidence.js';
import { effectivePolicy } from './effective-policy.js';
import { type UsableEstimate, directionOf, EvidenceStreak, usableEstimate } from './evidence-streak.js';
import { learningRateHint } from './learning-rate-hint.js';
import { type ReasonEvidence, changeReason, insideReason, monotoneReason, nearestIsCurrentReason } from './reason.js';
import { tradeOff } from './trade-off.js';

const UNBOUNDED: Interval = Object.freeze({ low: 0, high: Number.POSITIVE_INFINITY });

/**
 * An unapplied change is revised (re-emitted with a new target) only when the
 * target moved by at least this ratio: otherwise a drifting estimate would
 * re-announce the change at every multiple of the granularity it crosses.
 */
export const REVISION_RATIO = 1.25;

/** One decision, before it becomes a numbered Recommendation. */
type Decision = Omit<Recommendation, 'run' | 'step' | 'sequence' | 'unixMs'>;

/**
 * One run's batch-size policy: step statistics in, a Recommendation out when
 * the decided advice — (action, recommended batch, current batch) — differs
 * from the last one emitted. So the first advice comes after `window` usable
 * steps, an unapplied change is not repeated, and once the batch moves fresh
 * advice follows `window` steps later. A policy the run cannot satisfy gives
 * one hold naming the problem (again only if the problem's text changes).
 */
export class RunPolicy {
  private readonly evidence = new EvidenceStreak();
  private sequence = 0;
  private lastKey: string | null = null;
  private lastChange: { action: RecommendationAction; current: number; target: number } | null = null;

  constructor(
    private readonly defaults: BatchPolicy,
    private readonly now: () => number = Date.now,
  ) {}

  observe(stats: StepStats, run: RunInfo | undefined): Recommendation | null {
    if (!run) return null;
    const facts = batchFacts(stats, run);
    if (!facts) {
      this.evidence.observe(stats, null);
      return null;
    }
    const overrides = run.policy ?? {};
    const effective = effectivePolicy(this.defaults, overrides, facts);
    if (effective.problem !== null) {
      this.evidence.observe(stats, null);
      return this.emit(`problem|${effective.problem}`, stats, this.problemHold(stats, facts, overrides, effective.problem));
    }
    const policy = effective.policy;
    const factor = OBJECTIVE_FACTOR[policy.objective];
    const estimate = usableEstimate(stats);
    const direction = estimate ? directionOf(estimate.interval, factor, facts.globalBatch) : null;
    const steps = this.evidence.observe(stats, direction);
    if (!estimate || !direction || steps < policy.window) return null;
    const decision = this.decide(estimate, direction, steps, facts, policy, stats.lr, run.optimizer);
    if (this.isMinorRevision(decision)) return null;
    return this.emit(`${decision.action}|${decision.recommendedGlobalBatch}|${decision.currentGlobalBatch}`, stats, decision);
  }

  /**
   * The same unapplied change with a target that moved by less than REVISION_RATIO. The target, not
   * the rounded batch: a target hovering where the rounding flips (54 → 48, 58 → 64) moves 7% while
   * the two batches are 33% apart, and re-advised the change at every step it crossed.
   */
  private isMinorRevision(d: Decision): boolean {
    const last = this.lastChange;
    if (!last || d.action === 'hold' || d.action !== last.action || d.currentGlobalBatch !== last.current) return false;
    const ratio = d.targetBatch / last.target;
    return Math.max(ratio, 1 / ratio) < REVISION_RATIO;
  }

  private emit(key: string, stats: StepStats, decision: Decision): Recommendation | null {
    if (key === this.lastKey) return null;
    this.lastKey = key;
    this.lastChange =
      decision.action === 'hold'
        ? null
        : { action: decision.action, current: decision.currentGlobalBatch, target: decision.targetBatch };
    return { run: stats.run, step: stats.step, sequence: ++this.sequence, ...decision, unixMs: this.now() };
  }

  private decide(
    estimate: UsableEstimate,
    direction: 'increase' | 'decrease' | 'hold',
    steps: number,
    facts: BatchFacts,
    policy: BatchPolicy,
    lr: number | null,
    optimizer: string | null,
  ): Decision {
    const factor = OBJECTIVE_FACTOR[policy.objective];
    const B = facts.globalBatch;
    const target = factor * estimate.bSimple;
    const evidence: ReasonEvidence = { noiseScale: estimate.bSimple, interval: estimate.interval, objective: policy.objective, factor, currentBatch: B, steps };
    const hold = (reason: string): Decision => ({
      ...this.holdShape(facts, estimate.bSimple, estimate.interval, target, policy.objective),
      confidence: recommendationConfidence(estimate, factor, B, 'hold'),
      reason,
    });
    if (direction === 'hold') return hold(insideReason(evidence));
    if (direction === 'decrease' && policy.monotone) return hold(monotoneReason(evidence));
    const choice = chooseBatch(target, facts, policy);
    if (!choice || choice.globalBatch === B) {
      return hold(nearestIsCurrentReason(evidence, direction, this.endOfRange(facts, policy, direction)));
    }
    const action: Exclude<RecommendationAction, 'hold'> = choice.globalBatch > B ? 'increase' : 'decrease';
    // Bounds can turn the evidence round (a batch above max batch comes down even while the estimate says up).
    if (action === 'decrease' && policy.monotone) return hold(monotoneReason(evidence));
    const factors = tradeOff(estimate.bSimple, B, choice.globalBatch);
    return {
      action,
      currentGlobalBatch: B,
      recommendedGlobalBatch: choice.globalBatch,
      microBatch: choice.microBatch,
      accumulationSteps: choice.accumulationSteps,
      worldSize: facts.worldSize,
      noiseScale: estimate.bSimple,
      interval: estimate.interval,
      targetBatch: target,
      objective: policy.objective,
      ...factors,
      lrHint: learningRateHint(optimizer, lr, B, choice.globalBatch),
      confidence: recommendationConfidence(estimate, factor, B, action),
      reason: changeReason(evidence, {
        action,
        direction,
        recommendedBatch: choice.globalBatch,
        ...factors,
        limit: choice.limit,
        maxFactor: policy.maxFactor,
        boundValue: choice.limit === 'min batch' ? policy.minBatch : policy.maxBatch,
      }),
    };
  }

  /** Why no batch lies beyond the current one in that direction, or null when one does (then rounding kept it). */
  private endOfRange(facts: BatchFacts, policy: BatchPolicy, direction: 'increase' | 'decrease'): string | null {
    const up = direction === 'increase';
    if (nextBatch(facts, policy, up)) return null;
    if (up) return `the largest batch this run can take within max batch ${policy.maxBatch}`;
    const unbounded = nextBatch(facts, { ...policy, minBatch: 1 }, false);
    return unbounded ? `the smallest batch this run can take within min batch ${policy.minBatch}` : 'the smallest batch this run can take';
  }

  /** Keep the current batch: the run's own micro-batch and accumulation, no trade-off, no LR hint. */
  private holdShape(facts: BatchFacts, noiseScale: number, interval: Interval, target: number, objective: Objective) {
    return {
      action: 'hold' as const,
      currentGlobalBatch: facts.globalBatch,
      recommendedGlobalBatch: facts.globalBatch,
      microBatch: facts.microBatch,
      accumulationSteps: facts.accumulationSteps,
      worldSize: facts.worldSize,
      noiseScale,
      interval,
      targetBatch: target,
      objective,
      stepsFactor: 1,
      examplesFactor: 1,
      lrHint: null,
    };
  }

  /** The hold that names an unsatisfiable policy; made with whatever estimate exists (NaN / unbounded when none), confidence 0. */
  private problemHold(stats: StepStats, facts: BatchFacts, overrides: Partial<BatchPolicy>, problem: string): Decision {
    const merged = overrides.objective ?? this.defaults.objective;
    const objective: Objective = OBJECTIVES.includes(merged) ? merged : 'balanced';
    const noiseScale = stats.smoothed?.bSimple ?? Number.NaN;
    return {
      ...this.holdShape(facts, noiseScale, stats.smoothed?.interval ?? UNBOUNDED, OBJECTIVE_FACTOR[objective] * noiseScale, objective),
      confidence: 0,
      reason: `${problem.charAt(0).toUpperCase()}${problem.slice(1)}.`, // a sentence, as every reason is
    };
  }
}
