import { readFile } from 'node:fs/promises';
import { NoiseScopeError } from '../errors.js';
import { PAYLOAD_KEY, RUN_LOG_SCHEMA_VERSION, type RunLogRecord, type RunLogRecordType } from './schema.js';

/** A line that is not a whole record: a write cut short by a crash. */
export interface TornLine {
  /** 1-based line number in the file. */
  readonly line: number;
  /** Byte offset of the line's start. */
  readonly offset: number;
  readonly bytes: number;
  /** True for the file's last line, the usual place of a crash mid-write. */
  readonly last: boolean;
}

export interface RunLog {
  readonly path: string;
  /** In the order they were written. */
  readonly records: readonly RunLogRecord[];
  /** Skipped lines, reported rather than fatal. */
  readonly torn: readonly TornLine[];
}

/** Reads a run log back into typed records (see schema.ts); torn lines are skipped and reported. */
export async function readRunLog(path: string): Promise<RunLog> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new NoiseScopeError('invalid-message', `cannot read run log ${path}: ${(error as Error).message}`, { cause: error });
  }
  return parseRunLog(text, path);
}

/**
 * Parses a run log's text. A line that is not JSON is torn (skipped, reported).
 * A JSON line that is not a record this version knows is a clear error naming
 * the file and line: it is not a crash artefact, and replaying past it would mislead.
 */
export function parseRunLog(text: string, path: string): RunLog {
  const records: RunLogRecord[] = [];
  const torn: TornLine[] = [];
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop(); // the final newline ends the last line, it does not start one
  let offset = 0;
  lines.forEach((line, i) => {
    const bytes = Buffer.byteLength(line);
    const record = parseRunLogLine(line, `${path}:${i + 1}`);
    if (record) records.push(record);
    else torn.push({ line: i + 1, offset, bytes, last: i === lines.length - 1 });
    offset += bytes + 1;
  });
  return { path, records, torn };
}

/** One line of a run log: its record, or null for a torn line (not JSON); a JSON line that is no record throws, naming `where`. */
export function parseRunLogLine(line: string, where: string): RunLogRecord | null {
  if (line.trim() === '') return null;
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return null;
  }
  return toRecord(value, where);
}

const TYPES = new Set(Object.keys(PAYLOAD_KEY));

function toRecord(value: unknown, where: string): RunLogRecord {
  const bad = (why: string) => new NoiseScopeError('invalid-message', `${where}: not a run log record: ${why}`);
  if (!isObject(value)) throw bad('not a JSON object');
  if (value.v !== RUN_LOG_SCHEMA_VERSION) {
    if (typeof value.v === 'number' && value.v > RUN_LOG_SCHEMA_VERSION) {
      throw bad(`schema version ${value.v} is newer than this noisescope reads (${RUN_LOG_SCHEMA_VERSION}); upgrade noisescope`);
    }
    throw bad(`"v" must be ${RUN_LOG_SCHEMA_VERSION}, got ${JSON.stringify(value.v)}`);
  }
  if (typeof value.type !== 'string' || !TYPES.has(value.type)) throw bad(`unknown "type" ${JSON.stringify(value.type)}`);
  if (typeof value.unixMs !== 'number') throw bad('"unixMs" must be a number');
  const type = value.type as RunLogRecordType;
  const key = PAYLOAD_KEY[type];
  if (key === null) {
    if (typeof value.run !== 'string' || typeof value.dropped !== 'number') throw bad('a log-gap needs "run" and "dropped"');
    return value as unknown as RunLogRecord;
  }
  const payload = value[key];
  if (!isObject(payload) || typeof payload.run !== 'string') throw bad(`"${key}" must be an object with a "run"`);
  if ((type === 'step' || type === 'layers' || type === 'recommendation') && typeof payload.step !== 'number') {
    throw bad(`"${key}.step" must be a number`);
  }
  reviveNonFinite(type, payload);
  return value as unknown as RunLogRecord;
}

/** Puts back the infinities JSON wrote as null (schema.ts lists them). */
function reviveNonFinite(type: RunLogRecordType, payload: Record<string, unknown>): void {
  if (type === 'step') {
    for (const estimate of [payload.raw, payload.smoothed]) {
      if (!isObject(estimate)) continue;
      reviveInterval(estimate.interval);
      if (isObject(estimate.spread) && estimate.spread.df === null) estimate.spread.df = Infinity;
    }
  } else if (type === 'recommendation') {
    reviveInterval(payload.interval);
  } else if (type === 'run' || type === 'run-ended') {
    if (isObject(payload.policy) && payload.policy.maxBatch === null) payload.policy.maxBatch = Infinity;
    // Logs written before uncovered layers existed: every parameter was covered.
    if (!Array.isArray(payload.uncoveredLayers)) payload.uncoveredLayers = [];
  }
}

function reviveInterval(interval: unknown): void {
  if (!isObject(interval)) return;
  if (interval.low === null) interval.low = -Infinity;
  if (interval.high === null) interval.high = Infinity;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
