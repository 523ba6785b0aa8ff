import { LABEL_WIDTH, layoutChart, RESTART, segments } from '../chart.js';
import { fitSpans, type Span } from '../fit.js';
import type { ChartPoint } from '../model.js';
import { Line, Panel, Spans, Toned } from './toned.js';

export interface ChartPanelProps {
  readonly points: readonly ChartPoint[];
  readonly width: number;
  readonly height: number;
  readonly focused: boolean;
  readonly note: string | null;
  /** A recent smoothing restart ("lr 0.05 → 0.005 at step 300: smoothing restarted"), shown in the legend's place. */
  readonly restart: string | null;
}

/** B_simple over steps with its interval and the global batch, log scale; restarts marked. */
export function ChartPanel({ points, width, height, focused, note, restart }: ChartPanelProps) {
  const plotWidth = Math.max(8, width - 4 - LABEL_WIDTH - 1);
  const plotHeight = Math.max(2, height - 3);
  const chart = layoutChart(points, plotWidth, plotHeight);
  const batch = points.at(-1)?.globalBatch;
  const untrusted = points.slice(-plotWidth).some((p) => p.bSimple !== null && !p.trusted);
  const steps = chart.firstStep === null ? 'no steps yet' : `steps ${chart.firstStep}–${chart.lastStep}`;
  // The legend gives way from the right and the least needed first; a restart notice stays.
  const legend: Span[] = [
    { forms: [`${' '.repeat(LABEL_WIDTH)} `], tone: 'muted', keep: 9 },
    ...(restart ? [{ forms: [`${RESTART} ${restart}  `, `${RESTART} ${restart}`], tone: 'mark' as const, keep: 8 }] : []),
    { forms: ['● B_simple ', ''], tone: 'accent', keep: 6 },
    ...(untrusted ? [{ forms: ['● untrusted ', ''], tone: 'warn' as const, keep: 5 }] : []),
    { forms: chart.unbounded ? ['│ interval ┆ unbounded ', '┆ unbounded ', ''] : ['│ interval ', ''], tone: 'muted', keep: 4 },
    { forms: [`─ batch ${batch ?? '–'}`, ''], tone: 'ok', keep: 7 },
    ...(chart.restarts && !restart ? [{ forms: [`  ${RESTART} lr/B changed`, `  ${RESTART} restart`], tone: 'mark' as const, keep: 5 }] : []),
    { forms: [`  ${steps}, log scale`, `  ${steps}`, ''], tone: 'muted', keep: 3 },
  ];
  return (
    <Panel focused={focused} width={width} height={height}>
      {points.length === 0 ? (
        <Toned tone="muted">{`B_simple over steps: ${note ?? 'the chart starts with the first estimated step'}`}</Toned>
      ) : (
        chart.rows.map((row, y) => (
          <Line key={y}>
            <Toned tone="muted">{(chart.labels[y] ?? '').padStart(LABEL_WIDTH)}┤</Toned>
            {segments(row).map((s, i) => (
              <Toned key={i} tone={s.tone}>
                {s.text}
              </Toned>
            ))}
          </Line>
        ))
      )}
      {points.length === 0 ? null : <Spans spans={fitSpans(legend, width - 4)} />}
    </Panel>
  );
}
