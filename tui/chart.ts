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
  /** Some shown step restarted the smoothing (a RESTART column). */
  readonly restarts: boolean;
  /** Some shown step changed the global batch (a step in the batch line). */
  readonly batchChanges: boolean;
}

/** The column of a step where the smoothing restarted (lr or batch changed the temperature). */
export const RESTART = '┃';

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
 * Interval: │ (muted), restart: ┃ (mark) over it, batch: ─ (ok) with ╭╯/╮╰ where it changed,
 * B_simple: ● (accent, warn while untrusted) on top.
 */
export function layoutChart(points: readonly ChartPoint[], width: number, height: number): Chart {
  const first = Math.max(0, points.length - Math.max(1, width));
  const shown = points.slice(first);
  const values = shown.flatMap((p) => [p.bSimple, p.low, p.high, p.globalBatch].filter(positive));
  const empty = (): Cell[] => Array.from({ length: width }, () => ({ ch: ' ', tone: 'plain' as const }));
  const rows = Array.from({ length: height }, empty);
  if (values.length === 0 || height < 2) {
    const steps = { firstStep: shown[0]?.step ?? null, lastStep: shown.at(-1)?.step ?? null };
    return { rows, labels: rows.map(() => ''), ...steps, unbounded: false, restarts: false, batchChanges: false };
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
  let restarts = false;
  let batchChanges = false;
  shown.forEach((p, x) => {
    const put = (y: number, ch: string, tone: Tone) => (rows[y]![x] = { ch, tone });
    if (positive(p.low) || p.high === Infinity) {
      const top = p.high !== null && Number.isFinite(p.high) && p.high > 0 ? rowOf(p.high) : 0;
      const bottom = positive(p.low) ? rowOf(p.low) : height - 1;
      if (p.high === Infinity) unbounded = true;
      for (let y = top; y <= bottom; y++) put(y, p.high === Infinity ? '┆' : '│', 'muted');
    }
    // Over the interval (one column of it matters less than the event), under batch and B_simple.
    if (p.temperatureChange) {
      restarts = true;
      for (let y = 0; y < height; y++) put(y, RESTART, 'mark');
    }
    // The point before the first shown one still tells whether the first column is a change.
    const before = points[first + x - 1]?.globalBatch;
    if (positive(p.globalBatch)) {
      const to = rowOf(p.globalBatch);
      const from = positive(before ?? null) ? rowOf(before!) : to;
      if (from === to) put(to, '─', 'ok');
      else {
        batchChanges = true;
        // A step in the line: up from the old row into the new one, or down.
        for (let y = Math.min(from, to) + 1; y < Math.max(from, to); y++) put(y, '│', 'ok');
        put(from, to < from ? '╯' : '╮', 'ok');
        put(to, to < from ? '╭' : '╰', 'ok');
      }
    }
    if (positive(p.bSimple)) put(rowOf(p.bSimple), '●', p.trusted ? 'accent' : 'warn');
  });
  const labels = rows.map((_, y) => {
    if (y !== 0 && y !== height - 1 && y !== Math.floor((height - 1) / 2)) return '';
    return short(10 ** (hi - (y / (height - 1)) * (hi - lo)));
  });
  return { rows, labels, firstStep: shown[0]?.step ?? null, lastStep: shown.at(-1)?.step ?? null, unbounded, restarts, batchChanges };
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
