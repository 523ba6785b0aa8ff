// Temperature regimes: B_simple moves as 1/T with T = lr/B, so estimateNoiseScale
// restarts a run's smoothing when T leaves its regime's by more than the tolerance.
import { from, lastValueFrom, toArray } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { SeededRandom, gaussianGradients, simulateSyntheticStep, type SyntheticGradients, type SyntheticLayer, type SyntheticLayout } from '../../src/bench/synthetic-gradients.js';
import type { CompletedStep } from '../../src/ingest/completed-step.js';
import type { IngestedStep } from '../../src/ingest/ingest.js';
import type { RunLayout } from '../../src/ingest/run-layout.js';
import { estimateNoiseScale, type NoiseScaleUpdate } from '../../src/stats/estimate-noise-scale.js';
import { DEFAULT_SMOOTHING, type SmoothingOptions, validateSmoothingOptions } from '../../src/stats/smoothing-options.js';
import { relativeError } from './simulate.js';

const LAYERS: readonly SyntheticLayer[] = [
  { name: 'hidden', numel: 300, gradSqNorm: 1, bSimple: 40 },
  { name: 'out', numel: 200, gradSqNorm: 0.5, bSimple: 120 },
];
const K4_OF_16: SyntheticLayout = { name: '4 × 16', microExamples: [[16, 16, 16, 16]], allReduce: false };
const K4_OF_32: SyntheticLayout = { name: '4 × 32', microExamples: [[32, 32, 32, 32]], allReduce: false };

function layoutOf(source: SyntheticGradients): RunLayout {
  return { run: 'r', worldSize: 1, layers: source.layers, uncoveredLayers: [], datasetSize: null, every: 1, mode: 'norms', optimizer: 'SGD', policy: {} };
}

/** One measured step of run 'r' from `source`, with the given learning rate. */
function stepOf(rng: SeededRandom, source: SyntheticGradients, step: number, lr: number | null, layout = K4_OF_16): IngestedStep {
  return { layout: layoutOf(source), step: { ...simulateSyntheticStep(rng, source, layout, step), run: 'r', lr } };
}

function withStep(s: IngestedStep, patch: Partial<CompletedStep>): IngestedStep {
  return { layout: s.layout, step: { ...s.step, ...patch } };
}

function estimate(steps: readonly IngestedStep[], temperatureTolerance = DEFAULT_SMOOTHING.temperatureTolerance): Promise<NoiseScaleUpdate[]> {
  return lastValueFrom(from(steps).pipe(estimateNoiseScale({ ...DEFAULT_SMOOTHING, temperatureTolerance }), toArray()));
}

/** Steps 0..count−1 with lr(step). */
function run(seed: number, count: number, lr: (step: number) => number | null): IngestedStep[] {
  const rng = new SeededRandom(seed);
  const source = gaussianGradients(rng, LAYERS);
  return Array.from({ length: count }, (_, s) => stepOf(rng, source, s, lr(s)));
}

const changesIn = (out: readonly NoiseScaleUpdate[]) => out.filter((u) => u.stats.temperatureChange !== null).map((u) => u.stats.step);

describe('a learning-rate drop restarts the smoothing at that step', () => {
  const CHANGE = 300;
  const steps = run(1, 420, (s) => (s < CHANGE ? 0.1 : 0.01));

  it('flags the change on exactly that step and starts the regime there', async () => {
    const out = await estimate(steps);
    expect(changesIn(out)).toEqual([CHANGE]);
    expect(out[CHANGE]!.stats.temperatureChange).toEqual({ fromLr: 0.1, toLr: 0.01, fromBatch: 64, toBatch: 64 });
    for (const u of out) expect(u.stats.regimeStartStep).toBe(u.stats.step < CHANGE ? 0 : CHANGE);
    expect(out[CHANGE - 1]!.stats.temperature).toBe(0.1 / 64);
    expect(out[CHANGE]!.stats.temperature).toBe(0.01 / 64);
    // Steps measured count across regimes.
    expect(out.at(-1)!.stats.stepsMeasured).toBe(420);
  });

  it('after the change, total and per-layer smoothing equal a fresh estimator’s on the post-change steps only', async () => {
    const out = await estimate(steps);
    const fresh = await estimate(steps.slice(CHANGE));
    fresh.forEach((f, i) => {
      const u = out[CHANGE + i]!;
      expect(u.stats.smoothed).toEqual(f.stats.smoothed);
      expect(u.stats.raw).toEqual(f.stats.raw);
      expect(u.layers).toEqual(f.layers);
    });
    // The last step of the old regime was smoothed from all 300 steps: it differs from the first of the new.
    expect(out[CHANGE]!.stats.smoothed!.gradSqNorm).toBe(out[CHANGE]!.stats.raw!.gradSqNorm);
    expect(out[CHANGE - 1]!.stats.smoothed!.gradSqNorm).not.toBe(out[CHANGE - 1]!.stats.raw!.gradSqNorm);
  });

  it('says “re-estimating” until the new regime is trusted; a skip note still wins on a skipped step', async () => {
    const skipped = steps.map((s, i) => (i === CHANGE + 3 ? withStep(s, { skipReason: 'non-finite gradient on rank 0', lr: 0.5 }) : s));
    const out = await estimate(skipped);
    const note = 'learning-rate change at step 300 (lr 0.1 → 0.01, batch 64): smoothing restarted, re-estimating';
    const trustedAt = out.findIndex((u, i) => i >= CHANGE && u.stats.smoothed!.trusted);
    expect(trustedAt).toBeGreaterThan(CHANGE + 3);
    for (let i = CHANGE; i < trustedAt; i++) {
      expect(out[i]!.stats.note).toBe(i === CHANGE + 3 ? 'skipped: non-finite gradient on rank 0' : note);
    }
    expect(out[trustedAt]!.stats.note).toBeNull();
    // The skipped step's lr 0.5 neither restarted nor moved the reference.
    expect(changesIn(out)).toEqual([CHANGE]);
    expect(out[CHANGE + 3]!.stats.temperatureChange).toBeNull();
    // The first regime warms up with the usual note, not a restart's.
    expect(out[1]!.stats.note).toMatch(/^(warming up|not yet)/);
  });
});

describe('what is and is not a new temperature', () => {
  it('a batch change with the lr scaled linearly keeps T: no restart', async () => {
    const rng = new SeededRandom(2);
    const source = gaussianGradients(rng, LAYERS);
    const steps = Array.from({ length: 200 }, (_, s) => (s < 100 ? stepOf(rng, source, s, 0.1) : stepOf(rng, source, s, 0.2, K4_OF_32)));
    const out = await estimate(steps);
    expect(changesIn(out)).toEqual([]);
    expect(out[99]!.stats.globalBatch).toBe(64);
    expect(out[100]!.stats.globalBatch).toBe(128);
    expect(out[100]!.stats.temperature).toBe(out[99]!.stats.temperature);
    expect(out.at(-1)!.stats.regimeStartStep).toBe(0);
  });

  it('a batch change alone is a new regime (the old batch’s evidence no longer applies)', async () => {
    const rng = new SeededRandom(3);
    const source = gaussianGradients(rng, LAYERS);
    const steps = Array.from({ length: 150 }, (_, s) => (s < 100 ? stepOf(rng, source, s, 0.1) : stepOf(rng, source, s, 0.1, K4_OF_32)));
    const out = await estimate(steps);
    expect(changesIn(out)).toEqual([100]);
    expect(out[100]!.stats.temperatureChange).toEqual({ fromLr: 0.1, toLr: 0.1, fromBatch: 64, toBatch: 128 });
    expect(out[100]!.stats.note).toBe('batch-size change at step 100 (lr 0.1, batch 64 → 128): smoothing restarted, re-estimating');
  });

  it('names a change of both lr and batch a temperature change, with both moves', async () => {
    const rng = new SeededRandom(4);
    const source = gaussianGradients(rng, LAYERS);
    const steps = Array.from({ length: 120 }, (_, s) => (s < 100 ? stepOf(rng, source, s, 0.1) : stepOf(rng, source, s, 0.0734567, K4_OF_32)));
    const out = await estimate(steps);
    expect(out[100]!.stats.note).toBe('temperature change at step 100 (lr 0.1 → 0.0735, batch 64 → 128): smoothing restarted, re-estimating');
  });

  it('moves within the tolerance do not restart; just beyond it they do, both ways', async () => {
    // The bound is symmetric in ln T: ×1.19 and ÷1.19 stay, ×1.21 (step 40) and then ÷1.21 from there (step 60) restart.
    const lrs = [0.1, 0.119, 0.1 / 1.19, 0.1, 0.121, 0.105, 0.1];
    const out = await estimate(run(5, 70, (s) => lrs[Math.floor(s / 10)]!));
    expect(changesIn(out)).toEqual([40, 60]);
    expect(out[40]!.stats.temperatureChange).toEqual({ fromLr: 0.1, toLr: 0.121, fromBatch: 64, toBatch: 64 });
    expect(out[60]!.stats.temperatureChange).toEqual({ fromLr: 0.105, toLr: 0.1, fromBatch: 64, toBatch: 64 });
    expect(out[59]!.stats.regimeStartStep).toBe(40);
    expect(out[69]!.stats.regimeStartStep).toBe(60);
  });

  it('a step with lr unknown or a global batch of 0 neither starts nor breaks a regime', async () => {
    const lr = (s: number) => (s % 3 === 1 ? null : s < 50 ? 0.1 : 0.01);
    const steps = run(6, 80, lr).map((s, i) => (i === 20 || i === 60 ? withStep(s, { globalExamples: 0 }) : s));
    const out = await estimate(steps);
    // Step 49 is null, so the change lands on step 50, from step 48's lr.
    expect(changesIn(out)).toEqual([50]);
    expect(out[50]!.stats.temperatureChange).toEqual({ fromLr: 0.1, toLr: 0.01, fromBatch: 64, toBatch: 64 });
    expect(out[49]!.stats.temperature).toBeNull();
    expect(out[20]!.stats.temperature).toBeNull();
    expect(out[49]!.stats.regimeStartStep).toBe(0);
  });

  it('lr never known: one regime, no temperature', async () => {
    const out = await estimate(run(7, 100, () => null));
    expect(changesIn(out)).toEqual([]);
    for (const u of out) {
      expect(u.stats.temperature).toBeNull();
      expect(u.stats.regimeStartStep).toBe(0);
    }
  });

  it('tolerance Infinity never restarts: the same smoothing as a run with no lr at all', async () => {
    const steps = run(8, 200, (s) => (s < 100 ? 0.1 : 0.001));
    const out = await estimate(steps, Number.POSITIVE_INFINITY);
    expect(changesIn(out)).toEqual([]);
    expect(out.at(-1)!.stats.regimeStartStep).toBe(0);
    const blind = await estimate(steps.map((s) => withStep(s, { lr: null })));
    expect(out.map((u) => u.stats.smoothed)).toEqual(blind.map((u) => u.stats.smoothed));
  });

  it('runs keep their own regimes', async () => {
    const a = run(9, 40, (s) => (s < 20 ? 0.1 : 0.01));
    const b = run(10, 40, () => 0.1).map((s) => ({ layout: { ...s.layout, run: 'b' }, step: { ...s.step, run: 'b' } }));
    const out = await estimate(a.flatMap((s, i) => [s, b[i]!]));
    expect(out.filter((u) => u.stats.temperatureChange).map((u) => `${u.stats.run}@${u.stats.step}`)).toEqual(['r@20']);
  });
});

describe('a slow cosine decay', () => {
  it('restarts each time the temperature has drifted 20% from its regime’s start', async () => {
    const lr0 = 0.1;
    const lrMin = 0.001;
    const length = 1000;
    const lr = (s: number) => lrMin + 0.5 * (lr0 - lrMin) * (1 + Math.cos((Math.PI * s) / length));
    const out = await estimate(run(11, length, lr));
    const starts = [0, ...changesIn(out)];
    // ln(100)/ln(1.2) = 25.3 drifts of 20%; each restart overshoots by under one step's move, so 24 or 25.
    expect(starts.length - 1).toBeGreaterThanOrEqual(24);
    expect(starts.length - 1).toBeLessThanOrEqual(25);
    for (let i = 1; i < starts.length; i++) {
      const ref = lr(starts[i - 1]!);
      // Beyond 20% at the restart, within it one step before.
      expect(ref / lr(starts[i]!)).toBeGreaterThan(1.2);
      expect(ref / lr(starts[i]! - 1)).toBeLessThanOrEqual(1.2);
    }
    for (const u of out) expect(u.stats.regimeStartStep).toBe(Math.max(...starts.filter((s) => s <= u.stats.step)));
  });
});

describe('temperatureTolerance validation', () => {
  it.each([0, -0.1, Number.NaN, Number.NEGATIVE_INFINITY, undefined, '0.2', null])('rejects %s with a RangeError naming it', (bad) => {
    const options = { ...DEFAULT_SMOOTHING, temperatureTolerance: bad } as unknown as SmoothingOptions;
    expect(() => validateSmoothingOptions(options)).toThrow(RangeError);
    expect(() => estimateNoiseScale(options)).toThrow(/^temperatureTolerance must be a number > 0 \(Infinity never restarts\), got /);
  });

  it('accepts any positive number and Infinity', () => {
    for (const ok of [1e-9, 0.2, 3, Number.POSITIVE_INFINITY]) {
      expect(() => estimateNoiseScale({ ...DEFAULT_SMOOTHING, temperatureTolerance: ok })).not.toThrow();
    }
  });
});

describe('after a 5× jump of the noise scale at an lr drop', () => {
  // lr 0.1 → 0.02 with B_simple ∝ 1/T: |G|² falls 5× (the iterate settles), tr(Σ) stays, B_simple 66.7 → 333.
  const CHANGE = 600;
  const AFTER = 100;
  const SEEDS = [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007];

  async function measure(seed: number, temperatureTolerance: number) {
    const rng = new SeededRandom(seed);
    const before = gaussianGradients(rng, LAYERS);
    const after = gaussianGradients(rng, LAYERS.map((l) => ({ ...l, gradSqNorm: l.gradSqNorm / 5, bSimple: l.bSimple * 5 })));
    const steps = Array.from({ length: CHANGE + AFTER }, (_, s) => (s < CHANGE ? stepOf(rng, before, s, 0.1) : stepOf(rng, after, s, 0.02)));
    const smoothed = (await estimate(steps, temperatureTolerance)).at(-1)!.stats.smoothed!;
    return { smoothed, truth: after.truth.bSimple, error: relativeError(smoothed.bSimple!, after.truth.bSimple) };
  }

  it(`with the restart, ${AFTER} steps later the estimate is the new regime’s (within 15%, interval covering it)`, async () => {
    for (const seed of SEEDS) {
      const { smoothed, truth, error } = await measure(seed, DEFAULT_SMOOTHING.temperatureTolerance);
      expect(error, `seed ${seed}`).toBeLessThan(0.15);
      expect(smoothed.trusted).toBe(true);
      expect(smoothed.interval!.low).toBeLessThanOrEqual(truth);
      expect(smoothed.interval!.high).toBeGreaterThanOrEqual(truth);
    }
  });

  it(`without it (tolerance Infinity) the estimate is still a mix, off by more than half and confidently wrong`, async () => {
    for (const seed of SEEDS) {
      const { smoothed, truth, error } = await measure(seed, Number.POSITIVE_INFINITY);
      expect(error, `seed ${seed}`).toBeGreaterThan(0.5);
      expect(smoothed.bSimple!).toBeLessThan(truth);
      expect(smoothed.interval!.high).toBeLessThan(truth);
    }
  });
});
