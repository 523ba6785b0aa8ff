// `noisescope report --csv`: one row per measured step, for a spreadsheet or pandas.read_csv.
import type { Estimate } from '../types.js';
import type { ReportRun } from './report-data.js';

export const CSV_COLUMNS = [
  'run', 'step', 'global_batch', 'micro_batches', 'ranks', 'source', 'levels', 'skipped',
  'raw_grad_sq_norm', 'raw_trace_sigma', 'raw_b_simple',
  'grad_sq_norm', 'trace_sigma', 'b_simple', 'b_simple_low', 'b_simple_high', 'trusted',
  'lr', 'loss', 'advice', 'recommended_global_batch', 'note',
] as const;

/** Empty for null; inf/-inf for unbounded interval ends (both read back as floats by pandas and spreadsheets). */
function cell(v: string | number | boolean | null | undefined): string {
  if (v === null || v === undefined) return '';
  if (typeof v === 'number') return v === Infinity ? 'inf' : v === -Infinity ? '-inf' : Number.isNaN(v) ? 'nan' : String(v);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  return /[",\n\r]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v;
}

function estimateCells(e: Estimate | null, withInterval: boolean): (number | boolean | null)[] {
  const cells: (number | boolean | null)[] = [e?.gradSqNorm ?? null, e?.traceSigma ?? null, e?.bSimple ?? null];
  if (withInterval) cells.push(e?.interval?.low ?? null, e?.interval?.high ?? null, e ? e.trusted : null);
  return cells;
}

export function reportCsv(report: ReportRun): string {
  const advice = new Map(report.recommendations.map((r) => [r.step, r]));
  const rows = report.steps.map((s) => {
    const r = advice.get(s.step);
    return [
      s.run, s.step, s.globalBatch, s.microBatches, s.ranks, s.source, s.levels, s.skipped,
      ...estimateCells(s.raw, false),
      ...estimateCells(s.smoothed, true),
      s.lr, s.loss, r?.action ?? null, r?.recommendedGlobalBatch ?? null, s.note,
    ].map(cell).join(',');
  });
  return `${[CSV_COLUMNS.join(','), ...rows].join('\n')}\n`;
}
