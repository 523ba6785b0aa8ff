// The one-line name of the compute backend in use, for health$ and the dashboard header.
import type { SelectionReport } from './select-backend.js';

/** e.g. "wasm-simd (probe 1.78 GB/s Gram; next js-unrolled 0.52)", or "reference (forced: plain JavaScript, …)". */
export function summarizeSelection(report: SelectionReport): string {
  const chosen = report.candidates.find((c) => c.name === report.chosen);
  const speed = chosen?.gramGBps === undefined ? '' : ` ${chosen.gramGBps.toFixed(2)} GB/s Gram`;
  if (report.forced) return `${report.chosen} (forced${speed ? `,${speed}` : ''}: ${report.mode})`;
  const next = report.candidates
    .filter((c) => c.verdict === 'correct' && c.gramGBps !== undefined)
    .sort((a, b) => (b.gramGBps ?? 0) - (a.gramGBps ?? 0))[0];
  const runnerUp = next ? `; next ${next.name} ${(next.gramGBps ?? 0).toFixed(2)}` : '';
  return `${report.chosen} (probe${speed}${runnerUp})`;
}
