// `noisescope bench soak --minutes N`: `bench ranks` held for minutes, with a Watch client that
// never reads attached throughout, to show the sidecar's memory is flat (the least-squares slope of
// its RSS after warm-up) and that nothing is dropped (every step completed, no refusal, no step
// given up, nothing dropped by the hooks: the policy for healthy ranks is no drops at all).
import { parseArgs } from 'node:util';
import { UsageError } from '../cli/flags.js';
import { formatRanksLoad, runRanksLoad, type RanksLoadReport } from './ranks-load.js';

export interface SoakOptions {
  readonly minutes: number;
  readonly ranks: number;
  readonly rate: number;
  readonly layers: number;
  readonly workers: number;
  /** Watch calls whose clients never read, attached throughout. */
  readonly stalledWatchers: number;
}

export const DEFAULT_SOAK: SoakOptions = { minutes: 5, ranks: 16, rate: 10, layers: 50, workers: 2, stalledWatchers: 1 };

/** The first fifth of the samples is warm-up (JIT, buffers growing to their working size): excluded from the slope. */
const WARMUP_FRACTION = 0.2;

export interface SoakReport extends SoakOptions {
  readonly load: RanksLoadReport;
  /** Least-squares slope of the sidecar's RSS after warm-up, MiB per minute. */
  readonly rssSlopeMiBPerMinute: number;
  /** RSS after warm-up: its first and last samples and the largest, MiB. */
  readonly rssAfterWarmup: { readonly first: number; readonly last: number; readonly max: number };
  /** Steps sent but not completed, refusals on the streams, and the sidecar's refused / incomplete / dropped-by-hooks counters. */
  readonly drops: { readonly stepsMissing: number; readonly refusals: number; readonly refused: number; readonly stepsIncomplete: number; readonly droppedByHooks: number };
}

/** Least-squares slope of evenly spaced samples, per sample. */
export function slopePerSample(values: readonly number[]): number {
  const n = values.length;
  if (n < 2) return Number.NaN;
  const meanX = (n - 1) / 2;
  const meanY = values.reduce((a, b) => a + b, 0) / n;
  let sxy = 0;
  let sxx = 0;
  values.forEach((y, x) => {
    sxy += (x - meanX) * (y - meanY);
    sxx += (x - meanX) ** 2;
  });
  return sxy / sxx;
}

export async function runSoak(options: Partial<SoakOptions> = {}): Promise<SoakReport> {
  const o: SoakOptions = { ...DEFAULT_SOAK, ...options };
  const load = await runRanksLoad({ ranks: o.ranks, rate: o.rate, seconds: o.minutes * 60, layers: o.layers, microBatches: 2, workers: o.workers, stalledWatchers: o.stalledWatchers });
  const series = load.rssMiB.series;
  const steady = series.slice(Math.floor(series.length * WARMUP_FRACTION));
  return {
    ...o,
    load,
    // RSS is sampled once a second.
    rssSlopeMiBPerMinute: slopePerSample(steady) * 60,
    rssAfterWarmup: { first: steady[0] ?? Number.NaN, last: steady.at(-1) ?? Number.NaN, max: Math.max(...steady) },
    drops: {
      stepsMissing: load.stepsSent - load.stepsCompleted,
      refusals: load.refusals,
      refused: load.health.refused,
      stepsIncomplete: load.health.stepsIncomplete,
      droppedByHooks: load.health.droppedByHooks,
    },
  };
}

export function formatSoak(r: SoakReport): string {
  const d = r.drops;
  const dropped = d.stepsMissing + d.refusals + d.refused + d.stepsIncomplete + d.droppedByHooks;
  return [
    `soak: ${r.ranks} ranks × ${r.rate} steps/s for ${r.minutes} min, ${r.stalledWatchers} Watch client${r.stalledWatchers === 1 ? '' : 's'} that never read${r.stalledWatchers === 1 ? 's' : ''} attached throughout`,
    `sidecar RSS after warm-up (first ${WARMUP_FRACTION * 100}% of samples): ${r.rssAfterWarmup.first.toFixed(1)} → ${r.rssAfterWarmup.last.toFixed(1)} MiB ` +
      `(max ${r.rssAfterWarmup.max.toFixed(1)}), slope ${r.rssSlopeMiBPerMinute.toFixed(3)} MiB/min`,
    `drops: ${dropped === 0 ? 'none' : dropped} — steps missing ${d.stepsMissing}, refusals ${d.refusals}, refused ${d.refused}, incomplete ${d.stepsIncomplete}, dropped by hooks ${d.droppedByHooks}`,
    formatRanksLoad(r.load),
  ].join('\n');
}

/** `noisescope bench soak [--minutes 5] [--ranks 16] [--rate 10] [--layers 50] [--workers 2] [--stalled-watchers 1] [--json]`; returns what to print. */
export async function runSoakCommand(args: string[]): Promise<string> {
  const flags = { minutes: 'minutes', ranks: 'ranks', rate: 'rate', layers: 'layers', workers: 'workers', 'stalled-watchers': 'stalledWatchers' } as const;
  const { values } = parseArgs({
    args,
    strict: true,
    options: { ...Object.fromEntries(Object.keys(flags).map((f) => [f, { type: 'string' }])), json: { type: 'boolean', default: false } } as Record<string, { type: 'string' | 'boolean' }>,
  });
  const options: { -readonly [K in keyof SoakOptions]?: number } = {};
  for (const [flag, key] of Object.entries(flags)) {
    const text = values[flag];
    if (typeof text !== 'string') continue;
    const n = Number(text);
    const whole = key !== 'rate' && key !== 'minutes';
    const least = key === 'stalledWatchers' ? 0 : Number.MIN_VALUE;
    if (text.trim() === '' || !Number.isFinite(n) || n < least || (whole && !Number.isInteger(n))) throw new UsageError(`--${flag} takes a ${least === 0 ? 'non-negative' : 'positive'} ${whole ? 'whole ' : ''}number, got '${text}'`);
    options[key] = n;
  }
  const report = await runSoak(options);
  return values.json ? JSON.stringify(report) : formatSoak(report);
}
