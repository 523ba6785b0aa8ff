// Plain-text and NDJSON renderings of the public values, for `serve` and `demo`.
import { modeSummary } from '../../tui/mode-summary.js';
import { rankDisagreements } from '../stats/gradient-diversity.js';
import type { Estimate, Health, Recommendation, RunInfo, StepStats } from '../types.js';

/** 3 significant digits, compact for large and small magnitudes. */
export function num(v: number | null | undefined): string {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  if (v === Infinity) return '∞';
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
  return Number(v.toPrecision(3)).toString();
}

function estimateText(e: Estimate): string {
  const interval = e.interval ? ` [${num(e.interval.low)}, ${num(e.interval.high)}]` : '';
  return `B_simple ${num(e.bSimple)}${interval}  |G|² ${num(e.gradSqNorm)}  tr(Σ) ${num(e.traceSigma)}`;
}

export function formatStep(s: StepStats): string {
  const batch = `B ${s.globalBatch} (${s.microBatches} micro${s.ranks > 1 ? ` × ${s.ranks} ranks` : ''})`;
  const head = `${s.run} step ${s.step}  ${batch}`;
  if (s.skipped) return `${head}  ${s.note ?? 'skipped'}`;
  if (!s.smoothed) return `${head}  no estimate: ${s.note ?? ''}`;
  const raw = s.raw ? `  (this step: ${num(s.raw.bSimple)})` : '';
  const trust = s.smoothed.trusted ? '' : '  not yet trustworthy';
  return `${head}  ${estimateText(s.smoothed)}${raw}${trust}${disagreementText(s)}`;
}

/**
 * Dense and sketch steps: a rank whose gradient disagrees with the other ranks' ("  rank 1 disagrees (cos -0.02)"),
 * then the micro-batches that disagree with the rest of their rank ("rank 0 micro-batch 2 disagrees (mean cosine -0.81)").
 */
function disagreementText(s: StepStats): string {
  const micro = (s.diversity ?? []).flatMap((d) => d.disagreeing.map((i) => `rank ${d.rank} micro-batch ${i} disagrees (mean cosine ${num(d.meanCosine[i])})`));
  const parts = [...rankDisagreements(s.diversity), ...micro];
  return parts.length > 0 ? `  ${parts.join('; ')}` : '';
}

export function formatRun(r: RunInfo): string {
  const state = r.ended ? 'ended' : `${r.ranksConnected}/${r.worldSize} ranks connected`;
  const n = r.datasetSize ? `, N=${r.datasetSize}` : '';
  const left = r.uncoveredLayers.reduce((sum, l) => sum + l.numel, 0);
  const uncovered = r.uncoveredLayers.length ? ` (${r.uncoveredLayers.length} more layers, ${left.toLocaleString('en-US')} parameters, not covered)` : '';
  // The source is known from the first step on; 'none' before it would read as "one batch scale only".
  const source = r.source === 'none' ? 'source none so far' : `source ${r.source}${r.perExampleSampled ? ' (per-example sums sampled)' : ''}`;
  return `run ${r.run}: ${r.layers.length} layers, ${r.parameters.toLocaleString('en-US')} parameters${uncovered}, mode ${modeSummary(r)}, ${source}, ${state}, every ${r.every} step(s)${n}`;
}

/** One line: what to do, how to get there, how sure, then the policy's own reason (which has the evidence). */
export function formatRecommendation(r: Recommendation): string {
  const layout = `${r.microBatch} per micro-batch × ${r.accumulationSteps} accumulation${r.worldSize > 1 ? ` × ${r.worldSize} ranks` : ''}`;
  const what = r.action === 'hold' ? `hold batch ${r.currentGlobalBatch}` : `${r.action} batch ${r.currentGlobalBatch} → ${r.recommendedGlobalBatch} (${layout})`;
  const lr = r.lrHint ? `, lr ${num(r.lrHint.currentLr)} → ${num(r.lrHint.suggestedLr)} (${r.lrHint.rule} rule, a heuristic)` : '';
  return `${r.run} step ${r.step}  recommendation #${r.sequence}: ${what}, confidence ${num(r.confidence)}${lr}. ${r.reason}`;
}

/** The problem counters only ('' when there are none), so it changes rarely. */
export function formatProblems(h: Health): string {
  if (!h.refused && !h.stepsIncomplete && !h.droppedByHooks && !h.ranksGone && !h.watchEventsDropped) return '';
  const gone = h.ranksGone ? `, ${h.ranksGone} rank${h.ranksGone === 1 ? '' : 's'} gone` : '';
  const watch = h.watchEventsDropped ? `, ${h.watchEventsDropped} Watch event${h.watchEventsDropped === 1 ? '' : 's'} dropped (a client not reading)` : '';
  return `ingest: ${h.stepsIncomplete} incomplete steps, ${h.refused} refused messages, ${h.droppedByHooks} measurements dropped by hooks${gone}${watch}`;
}

/** A run's NDJSON line, with its mode in words beside the fields (e.g. "modeSummary":"sketch m=4096"). */
export function ndjsonRun(r: RunInfo): string {
  return ndjson('run', { ...r, modeSummary: modeSummary(r) });
}

/** One NDJSON line; non-finite numbers become null (JSON has no Infinity) — JSON.stringify's own rule, so no replacer (its call per key doubled the cost). */
export function ndjson(type: string, value: object): string {
  return JSON.stringify({ type, ...value });
}

/** What the last estimate means for the batch in use (the paper's trade-off, not advice yet). */
export function formatSummary(s: StepStats): string {
  const e = s.smoothed;
  if (!e || e.bSimple === null) return `${s.run}: no noise-scale estimate${s.note ? ` (${s.note})` : ''}`;
  const b = s.globalBatch;
  const progress = 1 / (1 + e.bSimple / b);
  const interval = e.interval ? ` [${num(e.interval.low)}, ${num(e.interval.high)}]` : '';
  return [
    `${s.run}: B_simple ≈ ${num(e.bSimple)}${interval} at step ${s.step}, with a batch of ${b}${e.trusted ? '' : ' (not yet trustworthy)'}.`,
    `  Each step makes ${(progress * 100).toFixed(0)}% of the progress an exact gradient would (1/(1 + B_simple/B));`,
    `  the gradient's expected relative error |G_est − G|²/|G|² is ${num(e.bSimple / b)} (B_simple/B).`,
    `  B_simple estimates the critical batch: near it, steps and examples each cost about 2× their minimum.`,
  ].join('\n');
}
