import type { StepStats } from '../../src/types.js';
import { short } from '../chart.js';
import { candidates, progressPerStep, relativeGradientError } from '../tradeoff.js';
import { Line, Panel, Toned } from './toned.js';

export interface TradeoffPanelProps {
  readonly latest: StepStats | null;
  readonly width: number;
  readonly height: number;
  readonly focused: boolean;
}

/** Steps and examples for candidate batches around the current one; what the current batch buys. */
export function TradeoffPanel({ latest, width, height, focused }: TradeoffPanelProps) {
  const b = latest?.globalBatch ?? 0;
  const bSimple = latest?.smoothed?.bSimple ?? null;
  if (!latest || bSimple === null || b <= 0) {
    return (
      <Panel title="Trade-off" focused={focused} width={width} height={height}>
        <Toned tone="muted">{latest ? `no estimate: ${latest.note ?? 'waiting'}` : 'no estimate yet'}</Toned>
      </Panel>
    );
  }
  const rows = candidates(b, bSimple, Math.max(3, height - 5));
  const trusted = latest.smoothed?.trusted ?? false;
  return (
    <Panel title={`Trade-off · B_noise≈${short(bSimple)}`} focused={focused} width={width} height={height}>
      <Toned tone="muted">{'    batch  S/Smin  E/Emin'}</Toned>
      {rows.map((c) => (
        <Line key={c.batch}>
          <Toned tone={c.current ? 'accent' : c.knee ? 'ok' : 'plain'}>
            {`${c.current ? '▶' : ' '} ${String(c.batch).padStart(7)}  ${short(c.steps).padStart(6)}  ${short(c.examples).padStart(6)}`}
          </Toned>
          <Toned tone="muted">{c.current && c.knee ? ' now, knee' : c.current ? ' now' : c.knee ? ' knee' : ''}</Toned>
        </Line>
      ))}
      <Toned tone={trusted ? 'plain' : 'warn'}>
        {`B ${b}: ${(progressPerStep(b, bSimple) * 100).toFixed(0)}%/step · err ${short(relativeGradientError(b, bSimple))}`}
      </Toned>
    </Panel>
  );
}
