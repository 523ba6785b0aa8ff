// One semantic theme: named colours that read on light and dark terminals
// (no white/black text; muted is "dim", not grey-on-black).
import type { RecommendationAction } from '../src/types.js';

export type Tone = 'ok' | 'warn' | 'error' | 'muted' | 'accent' | 'mark' | 'plain';

export interface ToneStyle {
  readonly color?: string;
  readonly dimColor?: boolean;
  readonly bold?: boolean;
}

export const THEME: Readonly<Record<Tone, ToneStyle>> = {
  ok: { color: 'green' },
  warn: { color: 'yellow' },
  error: { color: 'red', bold: true },
  muted: { dimColor: true },
  accent: { color: 'cyan' },
  // Events on the chart (a smoothing restart): a hue no estimate or status uses.
  mark: { color: 'magenta' },
  plain: {},
};

/** Recommendation action → glyph and tone, in one place. */
export const ACTION_GLYPH: Readonly<Record<RecommendationAction, string>> = { increase: '▲', decrease: '▼', hold: '■' };

export function actionTone(action: RecommendationAction): Tone {
  return action === 'hold' ? 'ok' : 'accent';
}

/** What a run or estimate is doing, as the dashboard sees it. */
export type Status = 'waiting' | 'warming-up' | 'trusted' | 'no-estimate' | 'rank-missing' | 'ended' | 'disconnected';

/** Status → tone, in one place. */
export function statusTone(status: Status): Tone {
  switch (status) {
    case 'trusted':
      return 'ok';
    case 'warming-up':
    case 'no-estimate':
    case 'rank-missing':
      return 'warn';
    case 'disconnected':
      return 'error';
    case 'waiting':
    case 'ended':
      return 'muted';
  }
}
