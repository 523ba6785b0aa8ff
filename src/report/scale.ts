// Axis scales for the report: linear or log10, with ticks a reader can read off (1, 2, 5 × 10^k).

export interface Scale {
  readonly kind: 'linear' | 'log';
  /** Data values at the two ends of the axis (log: both > 0). */
  readonly domain: readonly [number, number];
  /** Pixels at the two ends (y axes run bottom → top, so range[0] > range[1]). */
  readonly range: readonly [number, number];
  /** A value's pixel; values outside the domain are clamped to its ends. */
  map(value: number): number;
  readonly ticks: readonly number[];
}

/** A linear axis through [low, high], widened to round tick values. */
export function linearScale(low: number, high: number, range: readonly [number, number], target = 5): Scale {
  if (!(high > low)) [low, high] = low === 0 ? [0, 1] : [low - Math.abs(low) / 2, low + Math.abs(low) / 2];
  const step = niceStep((high - low) / target);
  const d0 = Math.floor(low / step) * step;
  const d1 = Math.ceil(high / step) * step;
  const ticks: number[] = [];
  for (let i = 0; d0 + i * step <= d1 + step / 2; i++) ticks.push(roundOff(d0 + i * step, step));
  const [r0, r1] = range;
  const map = (v: number) => r0 + ((clamp(v, d0, d1) - d0) / (d1 - d0)) * (r1 - r0);
  return { kind: 'linear', domain: [d0, d1], range, map, ticks };
}

/** A log10 axis through [low, high] (both > 0), widened to whole decades; ticks at 1, 2, 5 × 10^k when few decades. */
export function logScale(low: number, high: number, range: readonly [number, number]): Scale {
  if (!(low > 0 && high > 0)) throw new RangeError(`a log axis needs positive bounds, got ${low}..${high}`);
  let e0 = Math.floor(Math.log10(low));
  let e1 = Math.ceil(Math.log10(high));
  if (e1 === e0) e1 += 1;
  const decades = e1 - e0;
  const stride = Math.ceil(decades / 8); // at most ~8 labelled decades
  if (decades > 8) e0 = e1 - stride * Math.ceil(decades / stride);
  const mantissas = decades <= 2 ? [1, 2, 5] : [1];
  const ticks: number[] = [];
  for (let e = e0; e <= e1; e += stride) for (const m of mantissas) if (e < e1 || m === 1) ticks.push(Number(`${m}e${e}`));
  const [r0, r1] = range;
  const l0 = e0;
  const l1 = e1;
  const map = (v: number) => {
    const l = v > 0 ? clamp(Math.log10(v), l0, l1) : l0;
    return r0 + ((l - l0) / (l1 - l0)) * (r1 - r0);
  };
  return { kind: 'log', domain: [10 ** e0, 10 ** e1], range, map, ticks };
}

/** Log when every value is positive and they span more than `spread`× (a noise scale that grows 10× reads better so). */
export function autoScale(values: readonly number[], range: readonly [number, number], spread = 20): Scale {
  const finite = values.filter(Number.isFinite);
  if (finite.length === 0) return linearScale(0, 1, range);
  const low = minOf(finite);
  const high = maxOf(finite);
  if (low > 0 && high / low > spread) return logScale(low, high, range);
  return linearScale(Math.min(0, low), high, range);
}

function niceStep(raw: number): number {
  const e = Math.floor(Math.log10(raw));
  const f = raw / 10 ** e;
  const m = f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10;
  return Number(`${m}e${e}`);
}

function roundOff(v: number, step: number): number {
  const digits = Math.max(0, -Math.floor(Math.log10(step)) + 1);
  return Number(v.toFixed(Math.min(digits, 15)));
}

const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v));

/** A tick label: compact (1.5k, 20M, 0.002), never exponent noise like 0.30000000000000004. */
export function tickLabel(v: number): string {
  const a = Math.abs(v);
  if (a === 0) return '0';
  for (const [unit, size] of [['G', 1e9], ['M', 1e6], ['k', 1e3]] as const) {
    if (a >= size) return `${Number((v / size).toPrecision(3))}${unit}`;
  }
  if (a < 1e-3) return v.toExponential(0);
  return String(Number(v.toPrecision(3)));
}

/** Math.min/max over any number of values (spreading 100,000 arguments overflows the stack). */
export const minOf = (values: readonly number[]): number => values.reduce((a, b) => (b < a ? b : a), Infinity);
export const maxOf = (values: readonly number[]): number => values.reduce((a, b) => (b > a ? b : a), -Infinity);
