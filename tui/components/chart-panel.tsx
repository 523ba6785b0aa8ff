import { LABEL_WIDTH, layoutChart, segments } from '../chart.js';
import type { ChartPoint } from '../model.js';
import { Line, Panel, Toned } from './toned.js';

export interface ChartPanelProps {
  readonly points: readonly ChartPoint[];
  readonly width: number;
  readonly height: number;
  readonly focused: boolean;
  readonly note: string | null;
}

/** B_simple over steps with its interval and the global batch, log scale. */
export function ChartPanel({ points, width, height, focused, note }: ChartPanelProps) {
  const plotWidth = Math.max(8, width - 4 - LABEL_WIDTH - 1);
  const plotHeight = Math.max(2, height - 3);
  const chart = layoutChart(points, plotWidth, plotHeight);
  const batch = points.at(-1)?.globalBatch;
  const untrusted = points.slice(-plotWidth).some((p) => p.bSimple !== null && !p.trusted);
  const steps = chart.firstStep === null ? 'no steps yet' : `steps ${chart.firstStep}–${chart.lastStep}`;
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
      {points.length === 0 ? null : (
        <Line>
          <Toned tone="muted">{`${' '.repeat(LABEL_WIDTH)} `}</Toned>
          <Toned tone="accent">{'● B_simple '}</Toned>
          {untrusted ? <Toned tone="warn">{'● untrusted '}</Toned> : null}
          <Toned tone="muted">{chart.unbounded ? '│ interval ┆ unbounded ' : '│ interval '}</Toned>
          <Toned tone="ok">{`─ batch ${batch ?? '–'}`}</Toned>
          <Toned tone="muted">{`  ${steps}, log scale`}</Toned>
        </Line>
      )}
    </Panel>
  );
}
