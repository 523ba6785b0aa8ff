// B_simple over steps, its interval and the global batch on one log-scale text chart.
import type { ChartPoint } from './model.js';
import type { Tone } from './theme.js';

export interface Cell {
  readonly ch: string;
  readonly tone: Tone;
}

export interface Chart {
  /** rows top to bottom, each `width` cells after the axis labels */
  readonly rows: readonly (readonly Cell[])[];
  readonly labels: readonly string[];
  readonly firstStep: number | null;
  readonly lastStep: number | null;
  readonly unbounded: boolean;
}

export const LABEL_WIDTH = 6;

/** Compact number for axes and tables: 3 significant digits, k/M suffixes. */
export function short(v: number | null): string {
  if (v === null || Number.isNaN(v)) return '–';
  if (v === Infinity) return '∞';
  const a = Math.abs(v);
  if (a >= 1e6) return `${Number((v / 1e6).toPrecision(3))}M`;
  if (a >= 1e4) return `${Number((v / 1e3).toPrecision(3))}k`;
  if (a !== 0 && a < 1e-3) return v.toExponential(1);
  return `${Number(v.toPrecision(3))}`;
}

const positive = (v: number | null): v is number => v !== null && Number.isFinite(v) && v > 0;

/**
 * Lays the last `width` points out on a `height`-row grid, log10 on the y axis.
 * Interval: │ (muted), B_simple: ● (accent, warn while untrusted), batch: ─ (ok).
 */
export function layoutChart(points: readonly ChartPoint[], width: number, height: number): Chart {
  const shown = points.slice(-Math.max(1, width));
  const values = shown.flatMap((p) => [p.bSimple, p.low, p.high, p.globalBatch].filter(positive));
  const empty = (): Cell[] => Array.from({ length: width }, () => ({ ch: ' ', tone: 'plain' as const }));
  const rows = Array.from({ length: height }, empty);
  if (values.length === 0 || height < 2) {
    return { rows, labels: rows.map(() => ''), firstStep: shown[0]?.step ?? null, lastStep: shown.at(-1)?.step ?? null, unbounded: false };
  }
  let lo = Math.log10(Math.min(...values));
  let hi = Math.log10(Math.max(...values));
  if (hi - lo < 0.3) {
    const mid = (hi + lo) / 2;
    lo = mid - 0.15;
    hi = mid + 0.15;
  }
  const rowOf = (v: number): number => {
    const t = (Math.log10(v) - lo) / (hi - lo);
    return Math.min(height - 1, Math.max(0, Math.round((1 - t) * (height - 1))));
  };
  let unbounded = false;
  shown.forEach((p, x) => {
    const put = (y: number, ch: string, tone: Tone) => (rows[y]![x] = { ch, tone });
    if (positive(p.low) || p.high === Infinity) {
      const top = p.high !== null && Number.isFinite(p.high) && p.high > 0 ? rowOf(p.high) : 0;
      const bottom = positive(p.low) ? rowOf(p.low) : height - 1;
      if (p.high === Infinity) unbounded = true;
      for (let y = top; y <= bottom; y++) put(y, p.high === Infinity ? '┆' : '│', 'muted');
    }
    if (positive(p.globalBatch)) put(rowOf(p.globalBatch), '─', 'ok');
    if (positive(p.bSimple)) put(rowOf(p.bSimple), '●', p.trusted ? 'accent' : 'warn');
  });
  const labels = rows.map((_, y) => {
    if (y !== 0 && y !== height - 1 && y !== Math.floor((height - 1) / 2)) return '';
    return short(10 ** (hi - (y / (height - 1)) * (hi - lo)));
  });
  return { rows, labels, firstStep: shown[0]?.step ?? null, lastStep: shown.at(-1)?.step ?? null, unbounded };
}

/** Consecutive cells of one tone, so a row renders as a few <Text> spans. */
export function segments(row: readonly Cell[]): { text: string; tone: Tone }[] {
  const out: { text: string; tone: Tone }[] = [];
  for (const cell of row) {
    const last = out.at(-1);
    if (last && last.tone === cell.tone) last.text += cell.ch;
    else out.push({ text: cell.ch, tone: cell.tone });
  }
  return out;
}
