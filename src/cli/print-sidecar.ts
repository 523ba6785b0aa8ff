import { distinctUntilChanged, map, merge, type Subscription } from 'rxjs';
import type { Sidecar } from '../sidecar.js';
import { summarizeSelection } from '../compute/backend-summary.js';
import { formatProblems, formatRecommendation, formatRun, formatStep, ndjson, ndjsonRun } from './format.js';

/** Subscribes to a sidecar and prints one line per event (plain or NDJSON). */
export function printSidecar(sidecar: Sidecar, json: boolean, write: (line: string) => void): Subscription {
  if (json) {
    return merge(
      sidecar.runs$.pipe(map((runs) => runs.map(ndjsonRun).join('\n'))),
      sidecar.stats$.pipe(map((s) => ndjson('step', s))),
      sidecar.layers$.pipe(map((l) => ndjson('layers', l))),
      sidecar.recommendations$.pipe(map((r) => ndjson('recommendation', r))),
      sidecar.health$.pipe(map((h) => ndjson('health', h))),
    ).subscribe((line) => {
      if (line) write(line);
    });
  }
  // A run's line only when it reads differently (runs$ emits on any run's change).
  const shown = new Map<string, string>();
  return merge(
    sidecar.runs$.pipe(
      map((runs) =>
        runs
          .map((r) => [r.run, formatRun(r)] as const)
          .filter(([run, line]) => shown.get(run) !== line && shown.set(run, line))
          .map(([, line]) => line)
          .join('\n'),
      ),
    ),
    sidecar.stats$.pipe(map(formatStep)),
    sidecar.recommendations$.pipe(map(formatRecommendation)),
    // Health only when something went wrong, and only when it changes.
    sidecar.health$.pipe(
      map(formatProblems),
      distinctUntilChanged(),
    ),
  ).subscribe((line) => {
    if (line) write(line);
  });
}

/** The compute backend the sidecar chose: one NDJSON line with the whole probe report, or one plain line. */
export function computeBackendLine(sidecar: Pick<Sidecar, 'computeBackend'>, json: boolean): string {
  const report = sidecar.computeBackend;
  return json ? JSON.stringify({ type: 'compute-backend', ...report }) : `noisescope compute backend: ${summarizeSelection(report)}`;
}
