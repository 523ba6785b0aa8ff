// Command-line values → sidecar options. Each bad value is a UsageError that
// names its flag and the value given (exit 2), raised before anything binds.
import { BACKEND_NAMES, isBackendName, type BackendName } from '../compute/backends.js';
import { OBJECTIVES } from '../recommend/batch-policy.js';
import type { SmoothingOptions } from '../stats/run-estimator.js';
import type { BatchPolicy, Objective } from '../types.js';

export class UsageError extends Error {
  override name = 'UsageError';
}

export function numberOption(value: string | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got '${value}'`);
  return n;
}

export function portOption(value: string | undefined, fallback: number): number {
  const port = numberOption(value, 'port', fallback);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--port must be 0..65535, got '${value}'`);
  return port;
}

function wholeOption(value: string, name: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isInteger(n) || n < 1) throw new UsageError(`--${name} must be a whole number ≥ 1, got '${value}'`);
  return n;
}

/** --partial-step-timeout <s>: how long a step some but not all ranks ended waits for the rest, and a rank whose stream ended without Goodbye for its return. */
export function partialStepTimeoutFromFlags(value: string | undefined): { partialStepTimeoutMs?: number } {
  if (value === undefined) return {};
  const seconds = Number(value);
  if (value.trim() === '' || !Number.isFinite(seconds) || !(seconds > 0)) {
    throw new UsageError(`--partial-step-timeout must be a number of seconds > 0, got '${value}'`);
  }
  return { partialStepTimeoutMs: seconds * 1000 };
}

/** parseArgs options for the recommendation policy and the smoothing (serve and demo). */
export const SIDECAR_FLAGS = {
  beta: { type: 'string' },
  confidence: { type: 'string' },
  'temperature-tolerance': { type: 'string' },
  objective: { type: 'string' },
  'min-batch': { type: 'string' },
  'max-batch': { type: 'string' },
  'max-micro-batch': { type: 'string' },
  'max-factor': { type: 'string' },
  window: { type: 'string' },
  monotone: { type: 'boolean', default: false },
  backend: { type: 'string' },
} as const;

type FlagValues = { readonly [K in keyof typeof SIDECAR_FLAGS]?: (typeof SIDECAR_FLAGS)[K]['type'] extends 'boolean' ? boolean : string };

export function smoothingFromFlags(values: FlagValues): Partial<SmoothingOptions> {
  const tolerance = values['temperature-tolerance'];
  return {
    ...(values.beta !== undefined ? { beta: fractionOption(values.beta, 'beta', '[0, 1)', (n) => n >= 0 && n < 1) } : {}),
    ...(values.confidence !== undefined
      ? { confidence: fractionOption(values.confidence, 'confidence', '(0, 1)', (n) => n > 0 && n < 1) }
      : {}),
    ...(tolerance !== undefined ? { temperatureTolerance: toleranceOption(tolerance) } : {}),
  };
}

function fractionOption(value: string, name: string, range: string, within: (n: number) => boolean): number {
  const n = numberOption(value, name, 0);
  if (!within(n)) throw new UsageError(`--${name} must be in ${range}, got '${value}'`);
  return n;
}

// Infinity is meaningful here: never restart the smoothing on a learning-rate change.
function toleranceOption(value: string): number {
  const n = /^\+?(inf|infinity)$/i.test(value.trim()) ? Number.POSITIVE_INFINITY : Number(value);
  if (value.trim() === '' || Number.isNaN(n) || !(n > 0)) {
    throw new UsageError(`--temperature-tolerance must be a number > 0 (or Infinity), got '${value}'`);
  }
  return n;
}

/** Only the flags given: the rest keep DEFAULT_BATCH_POLICY. */
export function policyFromFlags(values: FlagValues): Partial<BatchPolicy> {
  const policy: { -readonly [K in keyof BatchPolicy]?: BatchPolicy[K] } = {};
  if (values.objective !== undefined) {
    if (!OBJECTIVES.includes(values.objective as Objective)) {
      throw new UsageError(`--objective must be one of ${OBJECTIVES.join(', ')}, got '${values.objective}'`);
    }
    policy.objective = values.objective as Objective;
  }
  if (values['min-batch'] !== undefined) policy.minBatch = wholeOption(values['min-batch'], 'min-batch');
  if (values['max-batch'] !== undefined) policy.maxBatch = wholeOption(values['max-batch'], 'max-batch');
  if (policy.minBatch !== undefined && policy.maxBatch !== undefined && policy.maxBatch < policy.minBatch) {
    throw new UsageError(`--max-batch ${policy.maxBatch} is below --min-batch ${policy.minBatch}: no batch satisfies both`);
  }
  if (values['max-micro-batch'] !== undefined) policy.maxMicroBatch = wholeOption(values['max-micro-batch'], 'max-micro-batch');
  if (values['max-factor'] !== undefined) {
    const factor = Number(values['max-factor']);
    if (values['max-factor'].trim() === '' || !Number.isFinite(factor) || factor <= 1) {
      throw new UsageError(`--max-factor must be a number above 1, got '${values['max-factor']}'`);
    }
    policy.maxFactor = factor;
  }
  if (values.window !== undefined) policy.window = wholeOption(values.window, 'window');
  if (values.monotone) policy.monotone = true;
  return policy;
}

/** --backend NAME forces one compute backend; absent: the start-up probe picks the fastest correct one. */
export function backendFromFlags(values: FlagValues): { backend?: BackendName } {
  const name = values.backend;
  if (name === undefined) return {};
  if (!isBackendName(name)) throw new UsageError(`--backend must be one of ${BACKEND_NAMES.join(', ')}, got '${name}'`);
  return { backend: name };
}
