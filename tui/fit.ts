// A terminal line made of spans that give way, least important first, until it fits.
import type { Tone } from './theme.js';

export interface Span {
  /** Longest first; a last form of '' lets the span go entirely. */
  readonly forms: readonly string[];
  readonly tone: Tone;
  readonly bold?: boolean;
  /**
   * Spans with a lower `keep` shrink first; among equals, the rightmost. Default 0. One number
   * per shrink step interleaves a span's steps with other spans' (the last repeats).
   */
  readonly keep?: number | readonly number[];
}

export interface FittedSpan {
  readonly text: string;
  readonly tone: Tone;
  readonly bold: boolean;
}

/** Terminal columns of a string (the dashboard only uses single-width characters). */
export const columns = (text: string): number => [...text].length;

/** Picks a form for each span so the line fits `width` where it can; what still overflows, Ink truncates. */
export function fitSpans(spans: readonly Span[], width: number): FittedSpan[] {
  const chosen = spans.map(() => 0);
  const text = (i: number) => spans[i]!.forms[chosen[i]!] ?? '';
  const length = () => spans.reduce((n, _, i) => n + columns(text(i)), 0);
  const keep = (i: number): number => {
    const k = spans[i]!.keep ?? 0;
    return typeof k === 'number' ? k : (k[Math.min(chosen[i]!, k.length - 1)] ?? 0);
  };
  while (length() > width) {
    let pick = -1;
    spans.forEach((s, i) => {
      if (chosen[i]! < s.forms.length - 1 && (pick < 0 || keep(i) <= keep(pick))) pick = i;
    });
    if (pick < 0) break;
    chosen[pick]!++;
  }
  return spans.map((s, i) => ({ text: text(i), tone: s.tone, bold: s.bold ?? false })).filter((s) => s.text !== '');
}

/** The line's text without tones (tests, widths). */
export const plain = (line: readonly FittedSpan[]): string => line.map((s) => s.text).join('');
