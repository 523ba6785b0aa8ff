import type { LayerStats, Recommendation, RunInfo, StepStats } from '../types.js';

/**
 * The run log: one NDJSON file per run, `<dir>/<runLogFileName(run)>`,
 * appended to (never rewritten) by every sidecar that serves the run.
 *
 * Every line is one JSON object:
 *   {"v": 1, "type": T, "unixMs": <when the sidecar wrote it>, <payload>}
 *
 *   type            payload
 *   "run"           info: RunInfo      — first seen (the Hello), and whenever it changes (ranks joining or leaving)
 *   "step"          stats: StepStats   — every measured step, in the order stats$ emitted them
 *   "layers"        layers: LayerStats — per-layer estimates, throttled (every `layersEvery` steps of the run)
 *   "recommendation" recommendation: Recommendation
 *   "run-ended"     info: RunInfo      — the run as it ended (every rank said goodbye)
 *   "log-gap"       run, dropped, fromUnixMs, toUnixMs — lines the writer dropped because the disk
 *                   fell behind its bounded buffer; the records around it are otherwise complete
 *
 * Values are the public types of src/types.ts as JSON. JSON has no Infinity or
 * NaN: every non-finite number is written as null. The reader turns these back:
 * Interval.high null → Infinity (an interval the data cannot bound yet),
 * Interval.low null → -Infinity, BatchPolicy.maxBatch null → Infinity (unbounded),
 * EstimateSpread.df null → Infinity. Fields that are null in the types stay null.
 *
 * Never in the log: tokens, gradients or anything else the public types do not carry.
 *
 * A line without its newline, or that is not JSON, is a torn write (a crash
 * mid-line); a writer reopening the file first ends it with a newline, so a
 * torn line never swallows the next record.
 *
 * A restarted sidecar resumes an unfinished run (no run-ended after its last
 * step) from these records alone (resume-run.ts): each step's raw estimate is
 * what the whole model's smoother was fed, so replaying them restores it
 * exactly; the policy is replayed from the same steps; per-layer means come
 * from the last layers record. So resuming needed no new record or field.
 *
 * `v` grows when a record changes
 * shape; a reader refuses versions it does not know.
 */
export const RUN_LOG_SCHEMA_VERSION = 1;

interface RecordBase {
  readonly v: typeof RUN_LOG_SCHEMA_VERSION;
  readonly unixMs: number;
}

export interface RunRecord extends RecordBase {
  readonly type: 'run';
  readonly info: RunInfo;
}

export interface StepRecord extends RecordBase {
  readonly type: 'step';
  readonly stats: StepStats;
}

export interface LayersRecord extends RecordBase {
  readonly type: 'layers';
  readonly layers: LayerStats;
}

export interface RecommendationRecord extends RecordBase {
  readonly type: 'recommendation';
  readonly recommendation: Recommendation;
}

export interface RunEndedRecord extends RecordBase {
  readonly type: 'run-ended';
  readonly info: RunInfo;
}

export interface LogGapRecord extends RecordBase {
  readonly type: 'log-gap';
  readonly run: string;
  /** Lines the writer dropped. */
  readonly dropped: number;
  /** When the first and the last of them were dropped. */
  readonly fromUnixMs: number;
  readonly toUnixMs: number;
}

export type RunLogRecord =
  | RunRecord
  | StepRecord
  | LayersRecord
  | RecommendationRecord
  | RunEndedRecord
  | LogGapRecord;

export type RunLogRecordType = RunLogRecord['type'];

/** The key each record type keeps its payload under (log-gap's fields are its own). */
export const PAYLOAD_KEY = {
  run: 'info',
  step: 'stats',
  layers: 'layers',
  recommendation: 'recommendation',
  'run-ended': 'info',
  'log-gap': null,
} as const satisfies Record<RunLogRecordType, string | null>;
