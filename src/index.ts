// Public TypeScript API: start a sidecar, subscribe to its Observables.
export { startSidecar, DEFAULT_PORT } from './sidecar.js';
export type { Sidecar, SidecarOptions } from './sidecar.js';
export { NoiseScopeError, toNoiseScopeError } from './errors.js';
export type { NoiseScopeErrorCode } from './errors.js';
export { DEFAULT_SMOOTHING } from './stats/run-estimator.js';
export type { SmoothingOptions } from './stats/run-estimator.js';
export type {
  Estimate,
  Health,
  Interval,
  LayerEstimate,
  LayerInfo,
  LayerStats,
  RunInfo,
  Source,
  StepStats,
} from './types.js';
