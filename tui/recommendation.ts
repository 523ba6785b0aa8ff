// The recommendation panel's lines, as pure spans: what to do with the batch, why, what it
// buys, and — before any advice — what the policy is waiting for.
import type { BatchPolicy, Recommendation, TemperatureChange } from '../src/types.js';
import { short } from './chart.js';
import { fitSpans, type FittedSpan, type Span } from './fit.js';
import { recentRestart, type RunView, type SmoothingRestart } from './model.js';
import { ACTION_GLYPH, actionTone } from './theme.js';

/** The panel always takes this many lines, so the layout does not jump when advice arrives. */
export const RECOMMENDATION_LINES = 3;

const LABEL: Span = { forms: ['Recommendation '], tone: 'plain', bold: true, keep: 9 };

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

/** A factor as a signed percentage: 0.68 → −32%, 1.17 → +17%. */
export function percentChange(factor: number): string {
  if (!Number.isFinite(factor)) return '–';
  const p = Math.round((factor - 1) * 100);
  return p === 0 ? '±0%' : p < 0 ? `−${-p}%` : `+${p}%`;
}

/** What moved the temperature lr/B: "lr 0.05 → 0.005", "batch 64 → 128", or both. */
export function describeTemperatureChange(c: TemperatureChange): string {
  const parts = [
    c.fromLr !== c.toLr ? `lr ${short(c.fromLr)} → ${short(c.toLr)}` : null,
    c.fromBatch !== c.toBatch ? `batch ${c.fromBatch} → ${c.toBatch}` : null,
  ].filter((p) => p !== null);
  return parts.length ? parts.join(', ') : 'temperature lr/B changed';
}

/** "lr 0.05 → 0.005 at step 300: smoothing restarted" */
export const restartNotice = (r: SmoothingRestart): string => `${describeTemperatureChange(r.change)} at step ${r.step}: smoothing restarted`;

/** Why there is no advice yet, from the latest step's estimate. */
export function waitingFor(view: RunView | null, recommending: boolean): string {
  if (!recommending) return 'this sidecar sends no recommendations';
  if (!view) return 'waiting for a training job';
  const latest = view.latest;
  if (!latest) return 'waiting for the first measured step';
  const e = latest.smoothed;
  if (!e || e.bSimple === null) return `waiting: no estimate yet${latest.note ? ` (${latest.note})` : ''}`;
  if (!e.trusted) return 'waiting: the estimate is not trusted yet';
  return 'waiting: the estimate is trusted, the policy has not advised yet';
}

/** The run's own policy settings from its Hello (the sidecar's defaults fill the rest). */
export function describePolicy(p: Partial<BatchPolicy>): string | null {
  const parts = [
    p.objective !== undefined ? `objective ${p.objective}` : null,
    p.minBatch !== undefined || p.maxBatch !== undefined
      ? `batch ${p.minBatch ?? 1}–${p.maxBatch === undefined || p.maxBatch === Infinity ? '∞' : p.maxBatch}`
      : null,
    p.maxMicroBatch !== undefined && p.maxMicroBatch !== null ? `micro-batch ≤ ${p.maxMicroBatch}` : null,
    p.maxFactor !== undefined ? `≤ ${p.maxFactor}× per change` : null,
    p.window !== undefined ? `window ${plural(p.window, 'step')}` : null,
    p.monotone ? 'ramp-up only' : null,
  ].filter((x) => x !== null);
  return parts.length ? parts.join(', ') : null;
}

function waitingLines(view: RunView | null, recommending: boolean): Span[][] {
  const waiting = waitingFor(view, recommending);
  // A long note gives way at its parenthesis (the header shows it too).
  const first: Span[] = [LABEL, { forms: [waiting, waiting.replace(/ \(.*\)$/, '')], tone: 'muted' }];
  const restart = recentRestart(view);
  const batch = view?.latest?.globalBatch;
  const second: Span[] = restart
    ? [{ forms: [`  ${restartNotice(restart)}; no advice from the transient`, `  ${restartNotice(restart)}`], tone: 'mark' }]
    : recommending && batch
      ? [{ forms: [`  a change needs B_simple's interval to exclude the batch ${batch} for a sustained window`, `  a change needs B_simple's interval to exclude the batch ${batch} for a while`], tone: 'muted' }]
      : [];
  const policy = view ? describePolicy(view.info.policy) : null;
  const third: Span[] = policy ? [{ forms: [`  this run's policy: ${policy}`], tone: 'muted' }] : [];
  return [first, second, third];
}

function headline(view: RunView, r: Recommendation): Span[] {
  const ranks = plural(r.worldSize, 'rank');
  const [m, a] = [r.microBatch, r.accumulationSteps];
  const applied = r.action !== 'hold' && view.latest?.globalBatch === r.recommendedGlobalBatch;
  return [
    LABEL,
    { forms: [`${ACTION_GLYPH[r.action]} ${r.action} `], tone: actionTone(r.action), bold: true, keep: 9 },
    { forms: [r.action === 'hold' ? `at ${r.currentGlobalBatch}` : `${r.currentGlobalBatch} → ${r.recommendedGlobalBatch}`], tone: 'plain', bold: true, keep: 9 },
    {
      forms: [
        ` = micro-batch ${m} × ${plural(a, 'accumulation step')} × ${ranks}`,
        ` = micro-batch ${m} × ${a} accum × ${ranks}`,
        ` = ${m} × ${a} accum × ${ranks}`,
        ` = ${m}×${a}×${r.worldSize}`,
      ],
      tone: 'plain',
      // The words go before "confidence" does; the compact form only after it.
      keep: [4, 5, 7],
    },
    { forms: [` · confidence ${Math.round(r.confidence * 100)}%`, ` · ${Math.round(r.confidence * 100)}%`], tone: 'plain', keep: 6 },
    ...(applied ? [{ forms: [' · applied', ''], tone: 'ok' as const, keep: 6.5 }] : []),
  ];
}

/**
 * The reason, after the step it was made at: the policy re-advises only when the advice changes,
 * so its reason quotes the estimate of that step while the header shows the latest one. Marked
 * when the smoothing restarted since the advice (unless the advice caused it).
 */
function why(view: RunView, r: Recommendation): Span[] {
  const applied = r.action !== 'hold' && view.latest?.globalBatch === r.recommendedGlobalBatch;
  const restart = view.restart && view.restart.step > r.step && !applied ? view.restart : null;
  return [
    restart
      ? { forms: [`  at step ${r.step}, before the restart at step ${restart.step}: `], tone: 'mark', keep: 9 }
      : { forms: [`  at step ${r.step}: `], tone: 'muted', keep: 9 },
    { forms: [r.reason], tone: 'plain' },
  ];
}

function outcome(view: RunView, r: Recommendation): Span[] {
  if (r.action !== 'hold') {
    const [s, e] = [percentChange(r.stepsFactor), percentChange(r.examplesFactor)];
    const hint = r.lrHint;
    return [
      { forms: [`  to the same loss: ${s} steps, ${e} examples`, `  ${s} steps, ${e} examples`], tone: 'plain', keep: 5 },
      hint
        ? { forms: [` · lr hint (heuristic, ${hint.rule} rule): ${short(hint.currentLr)} → ${short(hint.suggestedLr)}`], tone: 'plain', keep: 7 }
        : { forms: [' · no lr hint (the hook reports no learning rate)', ' · no lr hint (lr unknown)'], tone: 'muted', keep: 6 },
      ...(hint ? [{ forms: [` — ${hint.note}`, ''], tone: 'muted' as const, keep: 0 }] : []),
    ];
  }
  const changes = view.batchChanges;
  if (changes.length > 0) {
    // Oldest first on the line, and the first to give way.
    return [
      { forms: ['  batch changed: '], tone: 'muted', keep: 9 },
      ...changes.map((c, i): Span => ({
        forms: [`${c.from} → ${c.to} at step ${c.step}${i < changes.length - 1 ? ' · ' : ''}`, ''],
        tone: 'plain',
        keep: i - changes.length,
      })),
    ];
  }
  const before = view.recommendations.at(-2);
  return [
    { forms: [`  holding since step ${r.step}`], tone: 'muted', keep: 9 },
    ...(before
      ? [{ forms: [` · before: ${ACTION_GLYPH[before.action]} ${before.action} ${before.currentGlobalBatch} → ${before.recommendedGlobalBatch} at step ${before.step}`, ''], tone: 'muted' as const, keep: 1 }]
      : []),
  ];
}

/** Exactly RECOMMENDATION_LINES lines (an empty one is blank), each fitted to `width` where it can be. */
export function recommendationLines(view: RunView | null, width: number, recommending = true): FittedSpan[][] {
  const r = view?.recommendation ?? null;
  const lines = !view || !r ? waitingLines(view, recommending) : [headline(view, r), why(view, r), outcome(view, r)];
  return lines.map((spans) => fitSpans(spans, width));
}
