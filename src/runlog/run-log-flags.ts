// `serve`'s run-log flags → the sidecar's runLog option. Logging is on by default on the command line.
import { resolve } from 'node:path';
import { UsageError } from '../cli/flags.js';
import { defaultRunLogDir } from './default-run-log-dir.js';
import type { RunLogOptions } from './write-run-log.js';

export const RUN_LOG_FLAGS = {
  'log-dir': { type: 'string' },
  'no-log': { type: 'boolean', default: false },
} as const;

/** The absolute log directory, or null with --no-log; each failure becomes one stderr line. */
export function runLogFromFlags(values: { 'log-dir'?: string | undefined; 'no-log'?: boolean | undefined }): RunLogOptions | null {
  const dir = values['log-dir'];
  if (values['no-log']) {
    if (dir !== undefined) throw new UsageError(`--no-log and --log-dir '${dir}' contradict each other: give one`);
    return null;
  }
  if (dir !== undefined && dir.trim() === '') throw new UsageError(`--log-dir must be a directory, got '${dir}'`);
  return {
    dir: resolve(dir ?? defaultRunLogDir()),
    onError: (failure) => process.stderr.write(`noisescope: ${failure.message} (${failure.path})\n`),
    onResume: (report) => process.stderr.write(`noisescope: ${report.message}\n`),
  };
}
