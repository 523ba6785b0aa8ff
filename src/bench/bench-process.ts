// What the benchmarks that run a real `serve` process share: where the CLI is, and its CPU time from /proc.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const CLOCK_TICKS = 100; // USER_HZ on Linux

/** The built CLI (dist/src/cli.js), from a module one directory below src/ (or its dist/ twin). */
export const cliPath = (): string =>
  fileURLToPath(new URL(import.meta.url.endsWith('.ts') ? '../../dist/src/cli.js' : '../cli.js', import.meta.url));

/** CPU seconds (user + system) of a process, or of one of its threads (`/proc/<pid>/task/<tid>`). */
export function cpuSeconds(pid: number, tid?: number): number {
  // Fields after the command name (which may hold spaces) start at field 3: utime is 14, stime 15.
  const stat = readFileSync(tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}
