import { createHash } from 'node:crypto';

// Names kept as they are: lowercase (so case-insensitive file systems cannot
// alias two runs), no path characters, not hidden, not a Windows device name.
const PLAIN = /^[a-z0-9][a-z0-9._-]{0,99}$/;
const WINDOWS_DEVICE = /^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\.|$)/;
const MAX_STEM = 80;

/**
 * The log file name for a run: the name itself when it is plain
 * ([a-z0-9._-], at most 100 characters), otherwise the name with every other
 * character replaced by '_' plus '+' and a hash of the exact name. '+' never
 * occurs in a plain name, so two runs get the same file only if their names
 * are equal (or their 32-bit hashes collide). Stable across restarts, so a
 * restarted sidecar appends to the same file.
 */
export function runLogFileName(run: string): string {
  if (run.length === 0) throw new RangeError('a run name must not be empty');
  if (PLAIN.test(run) && !run.endsWith('.') && !WINDOWS_DEVICE.test(run)) return `${run}.ndjson`;
  const stem = run
    .replace(/[^A-Za-z0-9._-]/g, '_')
    .replace(/^\.+/, '_')
    .slice(0, MAX_STEM);
  const hash = createHash('sha256').update(run, 'utf8').digest('hex').slice(0, 8);
  return `${stem}+${hash}.ndjson`;
}
