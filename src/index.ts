// Public TypeScript API: start a sidecar, subscribe to its Observables.
export { startSidecar, DEFAULT_PORT } from './sidecar.js';
export type { Sidecar, SidecarOptions } from './sidecar.js';
export { BACKEND_NAMES } from './compute/backends.js';
export type { BackendName } from './compute/backends.js';
export type { CandidateReport, SelectionReport } from './compute/select-backend.js';
export { DISAGREEMENT, rankDisagreements } from './stats/gradient-diversity.js';
export { DEFAULT_LIMITS } from './transport/limits.js';
export type { SidecarLimits } from './transport/limits.js';
export type { WatchStats } from './transport/watch-service.js';
export { DENSE_BUDGET_BYTES } from './ingest/dense-rank-step.js';
export { NoiseScopeError, toNoiseScopeError } from './errors.js';
export type { NoiseScopeErrorCode } from './errors.js';
export { DEFAULT_SMOOTHING } from './stats/run-estimator.js';
export type { SmoothingOptions } from './stats/run-estimator.js';
export { DEFAULT_BATCH_POLICY, OBJECTIVE_FACTOR, OBJECTIVES, mergePolicy, validateBatchPolicy } from './recommend/batch-policy.js';
export { recommendBatchSize } from './recommend/recommend-batch-size.js';
export type { PolicyInput } from './recommend/recommend-batch-size.js';
export { watchSidecar } from './remote/watch-client.js';
export type { ConnectionState, RemoteSidecar, WatchClientOptions } from './remote/watch-client.js';
export type { AuthOptions } from './transport/auth.js';
export type { TlsClientFiles, TlsServerFiles } from './transport/tls.js';
export type {
  BatchPolicy,
  Estimate,
  EstimateSpread,
  GradientDiversity,
  Health,
  Interval,
  LayerEstimate,
  LayerInfo,
  LayerStats,
  LearningRateHint,
  Objective,
  Recommendation,
  RankAgreement,
  RecommendationAction,
  RunInfo,
  Source,
  StepStats,
  TemperatureChange,
} from './types.js';
export { readRunLog, parseRunLog } from './runlog/read-run-log.js';
export type { RunLog, TornLine } from './runlog/read-run-log.js';
export { defaultRunLogDir } from './runlog/default-run-log-dir.js';
export { writeRunLog } from './runlog/write-run-log.js';
export type { RunLogFailure, RunLogOptions, RunLogSources, RunLogWriter } from './runlog/write-run-log.js';
export { RUN_LOG_SCHEMA_VERSION } from './runlog/schema.js';
export type { RunLogRecord, RunLogRecordType } from './runlog/schema.js';
