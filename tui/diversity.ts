// Gradient diversity (dense and sketch steps) folded into one dashboard line: how alike the
// step's micro-batch gradients were, and which one, if any, pointed elsewhere.
import type { GradientDiversity, StepStats } from '../src/types.js';
import type { Span } from './fit.js';

/** One gradient of the step: micro-batch `microBatch` of rank `rank`. */
export interface GradientRef {
  readonly rank: number;
  readonly microBatch: number;
}

export interface DiversitySummary {
  /** Micro-batches per rank (K) and ranks. */
  readonly microBatches: number;
  readonly ranks: number;
  /** Pairs within a rank that have a cosine (a zero gradient has none). */
  readonly pairs: number;
  /** Mean and least pairwise cosine over those pairs; null without any. */
  readonly meanCosine: number | null;
  readonly minCosine: number | null;
  /** The least alike pair. */
  readonly minPair: readonly [GradientRef, GradientRef] | null;
  /** Flagged by the sidecar (DISAGREEMENT), with each one's mean cosine to the rest of its rank. */
  readonly disagreeing: readonly (GradientRef & { readonly meanCosine: number })[];
  /** Data-parallel steps: ranks whose gradient disagrees with the other ranks', with their mean cosine to them. */
  readonly ranksDisagreeing: readonly { readonly rank: number; readonly meanCosine: number }[];
}

/** The summary of a step's diversity; null when the step carries none (norms mode). */
export function summarizeDiversity(diversity: StepStats['diversity']): DiversitySummary | null {
  if (!diversity || diversity.length === 0) return null;
  let pairs = 0, sum = 0, minCosine: number | null = null;
  let minPair: readonly [GradientRef, GradientRef] | null = null;
  for (const d of diversity) {
    const k = d.microBatches;
    for (let a = 0; a < k; a++) {
      for (let b = a + 1; b < k; b++) {
        const cosine = d.cosines[a * k + b];
        if (cosine === undefined || !Number.isFinite(cosine)) continue;
        pairs++;
        sum += cosine;
        if (minCosine === null || cosine < minCosine) [minCosine, minPair] = [cosine, [{ rank: d.rank, microBatch: a }, { rank: d.rank, microBatch: b }]];
      }
    }
  }
  return {
    microBatches: Math.max(...diversity.map((d) => d.microBatches)),
    ranks: diversity.length,
    pairs,
    meanCosine: pairs > 0 ? sum / pairs : null,
    minCosine,
    minPair,
    disagreeing: diversity.flatMap((d: GradientDiversity) => d.disagreeing.map((i) => ({ rank: d.rank, microBatch: i, meanCosine: d.meanCosine[i] ?? Number.NaN }))),
    ranksDisagreeing: diversity.flatMap((d) => (d.acrossRanks?.disagrees ? [{ rank: d.rank, meanCosine: d.acrossRanks.meanCosine }] : [])),
  };
}

/** A cosine in two decimals, its sign kept (−0.00 reads as 0.00). */
export function cosine(v: number | null): string {
  if (v === null || !Number.isFinite(v)) return '–';
  const fixed = v.toFixed(2);
  return fixed === '-0.00' ? '0.00' : fixed.replace('-', '−');
}

/** "micro-batch 3", or "rank 1 micro-batch 3" when the step has several ranks (short: "r1 mb3"). */
function name(g: GradientRef, ranks: number, long: boolean): string {
  if (long) return ranks > 1 ? `rank ${g.rank} micro-batch ${g.microBatch}` : `micro-batch ${g.microBatch}`;
  return ranks > 1 ? `r${g.rank} mb${g.microBatch}` : `mb${g.microBatch}`;
}

/** The diversity line's spans (tui/fit.ts shrinks them to the width): the flag is kept longest. */
export function diversitySpans(s: DiversitySummary): Span[] {
  const spans: Span[] = [{ forms: ['Diversity ', 'Div '], tone: 'plain', bold: true, keep: 3 }];
  if (s.pairs === 0) {
    spans.push({ forms: ['no pairs to compare (one micro-batch per rank)', 'no pairs'], tone: 'muted', keep: 1 });
    if (s.ranksDisagreeing.length > 0) spans.push(flagSpan(s));
    return spans;
  }
  const pair = s.minPair ? `${name(s.minPair[0], s.ranks, false)}·${name(s.minPair[1], s.ranks, false).replace(/^r\d+ /, '')}` : '';
  spans.push({
    forms: [`cos mean ${cosine(s.meanCosine)} min ${cosine(s.minCosine)}`, `cos ${cosine(s.meanCosine)}/${cosine(s.minCosine)}`],
    tone: 'plain',
    keep: 2,
  });
  spans.push({ forms: [` (${pair})`, ''], tone: 'muted', keep: 0 });
  const scope = `${s.microBatches} micro-batches${s.ranks > 1 ? ` × ${s.ranks} ranks` : ''}`;
  spans.push({ forms: [` over ${scope}`, ''], tone: 'muted', keep: 0 });
  if (s.disagreeing.length === 0 && s.ranksDisagreeing.length === 0) {
    spans.push({ forms: [s.microBatches >= 3 ? ' · none disagrees' : '', ''], tone: 'muted', keep: 0 });
    return spans;
  }
  spans.push(flagSpan(s));
  return spans;
}

/** The first flag (a rank against the other ranks before a micro-batch against its rank), and how many more. */
function flagSpan(s: DiversitySummary): Span {
  const more = s.ranksDisagreeing.length + s.disagreeing.length - 1;
  const others = more > 0 ? ` +${more} more` : '';
  const [rank] = s.ranksDisagreeing;
  const [first] = s.disagreeing;
  const [long, short, rest] = rank
    ? [`rank ${rank.rank}`, `r${rank.rank}`, 'the other ranks']
    : [name(first!, s.ranks, true), name(first!, s.ranks, false), 'the rest'];
  const meanCosine = rank ? rank.meanCosine : first!.meanCosine;
  const forms = [
    ` ⚠ ${long} disagrees (cos ${cosine(meanCosine)} to ${rest})${others}`,
    ` ⚠ ${long} disagrees (cos ${cosine(meanCosine)})${others}`,
    ` ⚠ ${short} disagrees${more > 0 ? ` +${more}` : ''}`,
  ];
  return { forms, tone: 'warn', bold: true, keep: [1, 4] }; // the wording gives way before the cosines, the flag last
}
