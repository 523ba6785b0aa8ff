// Values of every public type the run log carries, with the edge cases JSON
// cannot say directly (Infinity bounds, nulls, optional fields present and absent).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach } from 'vitest';
import type { LayerStats, Recommendation, RunInfo, StepStats } from '../../src/types.js';

export function runInfo(run: string, overrides: Partial<RunInfo> = {}): RunInfo {
  return {
    run,
    worldSize: 2,
    ranksConnected: 2,
    source: 'accumulation',
    mode: 'norms',
    layers: [
      { name: 'fc1.weight', numel: 8192, kind: 'Linear' },
      { name: 'fc1.bias', numel: 128, kind: 'Linear' },
    ],
    parameters: 8320,
    uncoveredLayers: [{ name: 'attn.in_proj_weight', numel: 3072, kind: 'MultiheadAttention' }],
    datasetSize: null,
    every: 1,
    startedUnixMs: 1_700_000_000_000,
    ended: false,
    optimizer: 'SGD',
    policy: { maxBatch: Infinity, objective: 'time' },
    ...overrides,
  };
}

export function stepStats(run: string, step: number, overrides: Partial<StepStats> = {}): StepStats {
  return {
    run,
    step,
    source: 'accumulation',
    globalBatch: 64,
    microBatches: 4,
    ranks: 2,
    levels: 3,
    raw: { gradSqNorm: -0.25, traceSigma: 41.5, bSimple: null, interval: null, trusted: false },
    smoothed: {
      gradSqNorm: 1.5,
      traceSigma: 96 + step,
      bSimple: (96 + step) / 1.5,
      interval: { low: 12.25, high: Infinity },
      trusted: false,
      spread: { varGradSqNorm: 0.01, varTraceSigma: 4, covariance: -0.02, df: 37.5 },
    },
    lr: 0.1,
    loss: null,
    skipped: false,
    note: 'the interval is not bounded yet',
    unixMs: 1_700_000_000_000 + step,
    stepsMeasured: step + 1,
    temperature: 0.1 / 64,
    regimeStartStep: 0,
    temperatureChange: step === 3 ? { fromLr: 0.2, toLr: 0.1, fromBatch: 64, toBatch: 64 } : null,
    ...overrides,
  };
}

export function layerStats(run: string, step: number): LayerStats {
  return {
    run,
    step,
    layers: [
      { name: 'fc1.weight', numel: 8192, gradSqNorm: 1.25, traceSigma: 80, bSimple: 64 },
      { name: 'fc1.bias', numel: 128, gradSqNorm: -0.01, traceSigma: 3, bSimple: null },
    ],
  };
}

export function recommendation(run: string, step: number, overrides: Partial<Recommendation> = {}): Recommendation {
  return {
    run,
    step,
    sequence: 1,
    action: 'increase',
    currentGlobalBatch: 64,
    recommendedGlobalBatch: 128,
    microBatch: 16,
    accumulationSteps: 4,
    worldSize: 2,
    noiseScale: 150,
    interval: { low: 110, high: Infinity },
    targetBatch: 150,
    objective: 'balanced',
    stepsFactor: 0.65,
    examplesFactor: 1.3,
    lrHint: { currentLr: 0.1, suggestedLr: 0.2, rule: 'linear', note: 'a heuristic: linear scaling for SGD' },
    confidence: 0.97,
    reason: 'B_noise ≈ 150 has stayed above the batch of 64 for 20 steps.',
    unixMs: 1_700_000_000_500,
    ...overrides,
  };
}

/** Per test file: `later(f)` undoes after each test (last first); `scratch()` is a fresh temp directory, removed after. */
export function afterEachTest() {
  const undo: (() => unknown)[] = [];
  afterEach(async () => {
    for (const f of undo.splice(0).reverse()) await f();
  });
  return {
    later: (f: () => unknown) => void undo.push(f),
    scratch: async () => {
      const dir = await mkdtemp(join(tmpdir(), 'noisescope-runlog-'));
      undo.push(() => rm(dir, { recursive: true, force: true }));
      return dir;
    },
  };
}
