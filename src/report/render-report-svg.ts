// `noisescope report`: a run log drawn as one self-contained SVG for a paper or a PR.
// Three panels share the step axis: B_simple with its interval (smoothed line, band,
// faint per-step points, the global batch for comparison), the global batch with the
// recommendations, and a heat strip of the largest layers' noise scales.
import { num } from '../cli/format.js';
import type { LayerStats, StepStats } from '../types.js';
import type { ReportRun } from './report-data.js';
import { autoScale, linearScale, logScale, maxOf, minOf, tickLabel, type Scale } from './scale.js';
import { el, escapeXml, pathData, px, text, viridis } from './svg.js';

export const REPORT_WIDTH = 1040;
const LEFT = 200; // room for layer names beside the heat strip
const RIGHT = 150; // legends and colour bar
const PLOT_W = REPORT_WIDTH - LEFT - RIGHT;
/** Points drawn per series at most: a 100,000-step run stays a small file (every k-th step, plus the last). */
export const MAX_POINTS = 1500;
/** Heat-strip rows (the layers with the most parameters) and columns (layers records, the last of each bin). */
export const MAX_LAYER_ROWS = 12;
export const MAX_LAYER_COLUMNS = 120;

const COLOR = { estimate: '#1f77b4', batch: '#555555', increase: '#2ca02c', decrease: '#d62728', hold: '#7f7f7f', grid: '#e5e5e5', axis: '#333333', missing: '#d9d9d9' };
const FONT = 'font-family="Helvetica, Arial, sans-serif"';

export interface ReportSvg {
  readonly svg: string;
  /** Things a reader of the picture should know (raw points off the axis, thinned series). */
  readonly notes: readonly string[];
}

export function renderReportSvg(report: ReportRun): ReportSvg {
  const steps = report.steps;
  const first = steps[0]!.step;
  const last = steps.at(-1)!.step;
  const x = linearScale(first, last, [LEFT, LEFT + PLOT_W], 8);
  const notes: string[] = [];
  const shown = thin(steps, MAX_POINTS);
  if (shown.length < steps.length) notes.push(`every ${Math.ceil(steps.length / MAX_POINTS)}th of ${steps.length} steps drawn (the last always)`);

  let top = 108;
  const noise = noisePanel(report, shown, x, top, notes);
  top += noise.height + 56;
  const batch = batchPanel(report, x, top);
  top += batch.height + 56;
  const layers = layerPanel(report, x, top, notes);
  top += layers.height + 40;
  const footer = notes.map((n, i) => text({ x: LEFT, y: top + i * 14, 'font-size': 10, fill: '#666' }, `Note: ${n}.`)).join('');
  const height = top + notes.length * 14 + 10;

  const svg = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${REPORT_WIDTH}" height="${px(height)}" viewBox="0 0 ${REPORT_WIDTH} ${px(height)}" ${FONT}>`,
    el('rect', { width: REPORT_WIDTH, height, fill: '#ffffff' }),
    header(report),
    noise.svg,
    batch.svg,
    layers.svg,
    footer,
    '</svg>',
    '',
  ].join('\n');
  return { svg, notes };
}

function header(report: ReportRun): string {
  const info = report.info;
  const steps = report.steps;
  const lastEstimate = [...steps].reverse().find((s) => s.smoothed?.bSimple != null);
  const facts = info
    ? [
        info.optimizer ?? 'optimizer unknown',
        `${info.parameters.toLocaleString('en-US')} parameters in ${info.layers.length} layers`,
        `${info.worldSize} rank${info.worldSize === 1 ? '' : 's'}`,
        `source: ${info.source}`,
        `${info.mode} mode`,
        ...(info.every > 1 ? [`every ${info.every} steps`] : []),
      ]
    : ['no run record in the log'];
  const span = `steps ${steps[0]!.step}–${steps.at(-1)!.step} (${steps.length} measured)`;
  const final = lastEstimate?.smoothed
    ? `final B_simple ≈ ${num(lastEstimate.smoothed.bSimple)}${lastEstimate.smoothed.interval ? ` (interval ${bound(lastEstimate.smoothed.interval.low)} – ${bound(lastEstimate.smoothed.interval.high)})` : ''}${lastEstimate.smoothed.trusted ? '' : ', not yet trusted'} at step ${lastEstimate.step}, global batch ${lastEstimate.globalBatch}`
    : 'no B_simple estimate yet';
  return el(
    'g',
    { id: 'title' },
    text({ x: 20, y: 30, 'font-size': 18, 'font-weight': 'bold' }, `Gradient noise scale — run ${report.run}`),
    text({ x: 20, y: 52, 'font-size': 12, fill: '#333' }, `${facts.join(' · ')} · ${span}`),
    text({ x: 20, y: 70, 'font-size': 12, fill: '#333' }, final),
  );
}

/** An interval end: num() already writes +∞; a lower end can be −∞ too. */
const bound = (v: number): string => (v === -Infinity ? '−∞' : num(v));

interface Panel {
  readonly svg: string;
  readonly height: number;
}

function noisePanel(report: ReportRun, shown: readonly StepStats[], x: Scale, top: number, notes: string[]): Panel {
  const height = 260;
  const range = [top + height, top] as const;
  const smoothed = report.steps.flatMap((s) => (s.smoothed?.bSimple != null && Number.isFinite(s.smoothed.bSimple) ? [s.smoothed.bSimple] : []));
  const batches = report.steps.map((s) => s.globalBatch);
  const core = [...smoothed, ...batches];
  const raws = report.steps.flatMap((s) => (s.raw?.bSimple != null && Number.isFinite(s.raw.bSimple) ? [s.raw.bSimple] : []));
  const y = estimateScale(core, raws, range);

  const band: ([number, number] | null)[][] = [];
  let run: [number, number, number][] = [];
  const flush = () => {
    if (run.length > 0) band.push([...run.map(([sx, hi]) => [sx, hi] as [number, number]), ...[...run].reverse().map(([sx, , lo]) => [sx, lo] as [number, number])]);
    run = [];
  };
  for (const s of shown) {
    const interval = s.smoothed?.interval;
    if (!interval) {
      flush();
      continue;
    }
    run.push([x.map(s.step), y.map(interval.high), y.map(interval.low)]);
  }
  flush();
  const bandSvg = band.map((points) => el('path', { class: 'band', d: `${pathData(points)}Z`, fill: COLOR.estimate, 'fill-opacity': '0.18', stroke: 'none' })).join('');

  let offAxis = 0;
  const dots: string[] = [];
  for (const s of shown) {
    const v = s.raw?.bSimple;
    if (v == null || !Number.isFinite(v)) continue;
    if (v < y.domain[0] || v > y.domain[1] || (y.kind === 'log' && v <= 0)) {
      offAxis++;
      continue;
    }
    dots.push(el('circle', { cx: x.map(s.step), cy: y.map(v), r: 1.6, 'data-step': String(s.step) }));
  }
  if (offAxis > 0) notes.push(`${offAxis} single-step B_simple value${offAxis === 1 ? '' : 's'} outside the top panel's axis not drawn`);
  const line = shown.map((s) => (s.smoothed?.bSimple != null && Number.isFinite(s.smoothed.bSimple) ? ([x.map(s.step), y.map(s.smoothed.bSimple)] as [number, number]) : null));
  const restarts = report.steps
    .filter((s) => s.temperatureChange !== null)
    .map((s) => el('line', { class: 'restart', x1: x.map(s.step), x2: x.map(s.step), y1: top, y2: top + height, stroke: '#999', 'stroke-dasharray': '2,3' }, el('title', {}, escapeXml(`step ${s.step}: lr/B changed, smoothing restarted`))))
    .join('');

  const legend = legendBox(LEFT + PLOT_W + 12, top + 8, [
    { label: 'B_simple (smoothed)', swatch: el('line', { x1: 0, x2: 18, y1: 0, y2: 0, stroke: COLOR.estimate, 'stroke-width': 2 }) },
    { label: 'interval', swatch: el('rect', { x: 0, y: -5, width: 18, height: 10, fill: COLOR.estimate, 'fill-opacity': '0.18' }) },
    { label: 'single step', swatch: el('circle', { cx: 9, cy: 0, r: 2, fill: COLOR.estimate, 'fill-opacity': '0.35' }) },
    { label: 'global batch', swatch: el('line', { x1: 0, x2: 18, y1: 0, y2: 0, stroke: COLOR.batch, 'stroke-dasharray': '4,3' }) },
    ...(restarts ? [{ label: 'smoothing restart', swatch: el('line', { x1: 9, x2: 9, y1: -6, y2: 6, stroke: '#999', 'stroke-dasharray': '2,3' }) }] : []),
  ]);
  const svg = el(
    'g',
    { id: 'panel-b-simple' },
    panelTitle(top, 'B_simple = tr(Σ)/|G|² over steps'),
    axes('b-simple', x, y, top, height, 'B_simple (examples)'),
    el('g', { id: 'b-simple-band' }, bandSvg),
    el('g', { id: 'b-simple-raw', fill: COLOR.estimate, 'fill-opacity': '0.3' }, ...dots),
    el('path', { id: 'b-simple-batch', d: pathData(stepLine(report.steps, x, y)), fill: 'none', stroke: COLOR.batch, 'stroke-width': 1, 'stroke-dasharray': '4,3' }),
    el('path', { id: 'b-simple-smoothed', d: pathData(line), fill: 'none', stroke: COLOR.estimate, 'stroke-width': 2, 'stroke-linejoin': 'round' }),
    restarts,
    legend,
  );
  return { svg, height };
}

/** Log when the smoothed values and batches are positive and span > 20×; the raw points only widen it to their 5th–95th percentiles. */
function estimateScale(core: readonly number[], raws: readonly number[], range: readonly [number, number]): Scale {
  const sorted = [...raws].sort((a, b) => a - b);
  const q = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
  const spread = sorted.length >= 10 ? [q(0.05)!, q(0.95)!] : sorted;
  const low = minOf(core);
  const high = maxOf(core);
  if (core.length > 0 && low > 0 && high / low > 20) {
    const positive = spread.filter((v) => v > 0);
    return logScale(Math.min(low, minOf(positive)), Math.max(high, maxOf(positive)), range);
  }
  return autoScale([0, ...core, ...spread], range, Infinity);
}

/** A step function: the value holds until the next step that changes it (only changes become vertices). */
function stepLine(steps: readonly StepStats[], x: Scale, y: Scale): [number, number][] {
  const points: [number, number][] = [];
  let previous: number | null = null;
  for (const s of steps) {
    if (s.globalBatch !== previous) {
      if (previous !== null) points.push([x.map(s.step), y.map(previous)]);
      points.push([x.map(s.step), y.map(s.globalBatch)]);
      previous = s.globalBatch;
    }
  }
  const end = steps.at(-1)!;
  points.push([x.map(end.step), y.map(end.globalBatch)]);
  return points;
}

function batchPanel(report: ReportRun, x: Scale, top: number): Panel {
  const height = 150;
  const range = [top + height, top] as const;
  const values = [...report.steps.map((s) => s.globalBatch), ...report.recommendations.map((r) => r.recommendedGlobalBatch)];
  const [low, high] = [minOf(values), maxOf(values)];
  const y = low > 0 && high / low > 4 ? logScale(low, high, range) : linearScale(0, high, range, 4);
  const markers = report.recommendations.map((r) => {
    const shape = r.action === 'increase' ? 'M-5,4L5,4L0,-5Z' : r.action === 'decrease' ? 'M-5,-4L5,-4L0,5Z' : 'M-4,0A4,4 0 1,0 4,0A4,4 0 1,0 -4,0Z';
    const what = r.action === 'hold' ? `hold at ${r.recommendedGlobalBatch}` : `${r.action} to ${r.recommendedGlobalBatch}`;
    return el(
      'g',
      { class: `recommendation ${r.action}`, transform: `translate(${px(x.map(r.step))},${px(y.map(r.recommendedGlobalBatch))})`, 'data-step': String(r.step), 'data-batch': String(r.recommendedGlobalBatch) },
      el('title', {}, escapeXml(`step ${r.step}: ${what} (B_noise ≈ ${num(r.noiseScale)}, confidence ${num(r.confidence)}): ${r.reason}`)),
      el('path', { d: shape, fill: COLOR[r.action], stroke: '#ffffff', 'stroke-width': 0.8 }),
    );
  });
  const legend = legendBox(LEFT + PLOT_W + 12, top + 8, [
    { label: 'global batch', swatch: el('line', { x1: 0, x2: 18, y1: 0, y2: 0, stroke: COLOR.batch, 'stroke-width': 2 }) },
    { label: 'advice: increase', swatch: el('path', { d: 'M4,4L14,4L9,-5Z', fill: COLOR.increase }) },
    { label: 'advice: decrease', swatch: el('path', { d: 'M4,-4L14,-4L9,5Z', fill: COLOR.decrease }) },
    { label: 'advice: hold', swatch: el('circle', { cx: 9, cy: 0, r: 4, fill: COLOR.hold }) },
  ]);
  const svg = el(
    'g',
    { id: 'panel-batch' },
    panelTitle(top, `Global batch size over steps${report.recommendations.length === 0 ? ' (no recommendation logged)' : ', with the recommended batch'}`),
    axes('batch', x, y, top, height, 'examples per step'),
    el('path', { id: 'batch-line', d: pathData(stepLine(report.steps, x, y)), fill: 'none', stroke: COLOR.batch, 'stroke-width': 2 }),
    el('g', { id: 'batch-recommendations' }, ...markers),
    legend,
  );
  return { svg, height };
}

function layerPanel(report: ReportRun, x: Scale, top: number, notes: string[]): Panel {
  const records = report.layers;
  if (records.length === 0) {
    return { svg: el('g', { id: 'panel-layers' }, panelTitle(top, 'Per-layer B_simple'), text({ x: LEFT, y: top + 20, 'font-size': 12, fill: '#666' }, 'no per-layer records in this log')), height: 24 };
  }
  const lastRecord = records.at(-1)!;
  const numel = new Map<string, number>((report.info?.layers ?? lastRecord.layers).map((l) => [l.name, l.numel]));
  const names = [...new Set(records.flatMap((r) => r.layers.map((l) => l.name)))]
    .sort((a, b) => (numel.get(b) ?? 0) - (numel.get(a) ?? 0) || a.localeCompare(b))
    .slice(0, MAX_LAYER_ROWS);
  const total = numel.size;
  if (total > names.length) notes.push(`the heat strip shows the ${names.length} largest of ${total} layers`);
  const columns = binned(records, MAX_LAYER_COLUMNS);
  const values = columns.flatMap((r) => r.layers.filter((l) => names.includes(l.name) && l.bSimple !== null && l.bSimple > 0).map((l) => l.bSimple!));
  const row = 16;
  const height = names.length * row;
  const colour = values.length > 0 ? logScale(minOf(values), maxOf(values), [0, 1]) : null;
  const cells: string[] = [];
  const lastValues: string[] = [];
  names.forEach((name, i) => {
    const y0 = top + i * row;
    columns.forEach((record, c) => {
      // A smoothed per-layer value holds from the step it was logged at until the next record (the last: to the run's last step).
      const x0 = x.map(c === 0 ? records[0]!.step : record.step); // a binned first column starts where the records do
      const x1 = x.map(columns[c + 1]?.step ?? report.steps.at(-1)!.step);
      const layer = record.layers.find((l) => l.name === name);
      const v = layer?.bSimple ?? null;
      const fill = v !== null && v > 0 && colour ? viridis(colour.map(v)) : COLOR.missing;
      const what = v === null ? 'not estimable (|G|² ≤ 0 so far)' : `B_simple ${num(v)}`;
      cells.push(el('rect', { class: 'cell', x: x0, y: y0, width: Math.max(x1 - x0, 2), height: row - 1, fill, 'data-layer': name, 'data-step': String(record.step) }, el('title', {}, escapeXml(`${name} at step ${record.step}: ${what}`))));
    });
    const label = name.length > 32 ? `…${name.slice(-31)}` : name;
    cells.push(text({ x: LEFT - 6, y: y0 + row / 2 + 3.5, 'font-size': 10, 'text-anchor': 'end' }, label));
    const final = lastRecord.layers.find((l) => l.name === name)?.bSimple ?? null;
    lastValues.push(text({ x: LEFT + PLOT_W + 6, y: y0 + row / 2 + 3.5, 'font-size': 10, fill: '#333' }, num(final)));
  });
  const svg = el(
    'g',
    { id: 'panel-layers' },
    panelTitle(top, `Per-layer B_simple (smoothed), largest ${names.length} layer${names.length === 1 ? '' : 's'}; last value at right`),
    el('g', { id: 'layer-cells' }, ...cells),
    ...lastValues,
    xAxis('layers', x, top + height),
    colour ? colourBar(colour, LEFT + PLOT_W + 60, top, Math.max(height, 60)) : '',
  );
  return { svg, height: Math.max(height, 60) };
}

function colourBar(scale: Scale, left: number, top: number, height: number): string {
  const stops = Array.from({ length: 11 }, (_, i) => el('stop', { offset: `${i * 10}%`, 'stop-color': viridis(1 - i / 10) }));
  const ticks = scale.ticks.map((t) => {
    const y = top + (1 - scale.map(t)) * height;
    return el('g', { class: 'tick', 'data-value': String(t) }, el('line', { x1: left + 10, x2: left + 13, y1: y, y2: y, stroke: COLOR.axis }), text({ x: left + 15, y: y + 3.5, 'font-size': 9 }, tickLabel(t)));
  });
  return el(
    'g',
    { id: 'layer-colour-bar', 'data-scale': 'log' },
    el('defs', {}, el('linearGradient', { id: 'viridis', x1: '0', y1: '0', x2: '0', y2: '1' }, ...stops)),
    el('rect', { x: left, y: top, width: 10, height, fill: 'url(#viridis)' }),
    ...ticks,
  );
}

function panelTitle(top: number, title: string): string {
  return text({ x: LEFT, y: top - 10, 'font-size': 13, 'font-weight': 'bold' }, title);
}

/** Grid, y ticks with labels, the y-axis title, and the step axis below. */
function axes(id: string, x: Scale, y: Scale, top: number, height: number, yTitle: string): string {
  const bottom = top + height;
  const yTicks = y.ticks.map((t) => {
    const ty = y.map(t);
    return el(
      'g',
      { class: 'tick', 'data-value': String(t), transform: `translate(0,${px(ty)})` },
      el('line', { x1: LEFT, x2: LEFT + PLOT_W, y1: 0, y2: 0, stroke: COLOR.grid }),
      el('line', { x1: LEFT - 4, x2: LEFT, y1: 0, y2: 0, stroke: COLOR.axis }),
      text({ x: LEFT - 7, y: 3.5, 'font-size': 10, 'text-anchor': 'end' }, tickLabel(t)),
    );
  });
  const titleX = LEFT - 52;
  const titleY = top + height / 2;
  return [
    el('g', { id: `${id}-y-axis`, class: 'axis y', 'data-scale': y.kind }, ...yTicks, el('line', { x1: LEFT, x2: LEFT, y1: top, y2: bottom, stroke: COLOR.axis }), text({ x: titleX, y: titleY, 'font-size': 11, 'text-anchor': 'middle', transform: `rotate(-90 ${titleX} ${px(titleY)})` }, `${yTitle}${y.kind === 'log' ? ', log scale' : ''}`)),
    xAxis(id, x, bottom),
  ].join('');
}

function xAxis(id: string, x: Scale, bottom: number): string {
  const ticks = x.ticks.map((t) =>
    el(
      'g',
      { class: 'tick', 'data-value': String(t), transform: `translate(${px(x.map(t))},0)` },
      el('line', { x1: 0, x2: 0, y1: bottom, y2: bottom + 4, stroke: COLOR.axis }),
      text({ x: 0, y: bottom + 15, 'font-size': 10, 'text-anchor': 'middle' }, tickLabel(t)),
    ),
  );
  return el('g', { id: `${id}-x-axis`, class: 'axis x', 'data-scale': x.kind }, el('line', { x1: LEFT, x2: LEFT + PLOT_W, y1: bottom, y2: bottom, stroke: COLOR.axis }), ...ticks, text({ x: LEFT + PLOT_W / 2, y: bottom + 30, 'font-size': 11, 'text-anchor': 'middle' }, 'optimizer step'));
}

function legendBox(left: number, top: number, items: readonly { label: string; swatch: string }[]): string {
  return el('g', { class: 'legend', transform: `translate(${left},${top})` }, ...items.map((item, i) => el('g', { transform: `translate(0,${i * 16})` }, item.swatch, text({ x: 24, y: 4, 'font-size': 10 }, item.label))));
}

/** Every k-th element and always the last, k chosen so at most `max` remain. */
function thin<T>(values: readonly T[], max: number): T[] {
  const k = Math.ceil(values.length / max);
  if (k <= 1) return [...values];
  return values.filter((_, i) => i % k === 0 || i === values.length - 1);
}

/** At most `max` layers records: the last record of each of `max` equal bins. */
function binned(records: readonly LayerStats[], max: number): LayerStats[] {
  if (records.length <= max) return [...records];
  return Array.from({ length: max }, (_, i) => records[Math.floor(((i + 1) * records.length) / max) - 1]!);
}
