import type { StepStats } from '../../src/types.js';
import { short } from '../chart.js';
import { candidates, progressPerStep, relativeGradientError, type Candidate } from '../tradeoff.js';
import type { Tone } from '../theme.js';
import { Line, Panel, Toned } from './toned.js';

export interface TradeoffPanelProps {
  readonly latest: StepStats | null;
  /** The policy's recommended global batch; null before its first advice. */
  readonly recommended: number | null;
  readonly width: number;
  readonly height: number;
  readonly focused: boolean;
}

function rowStyle(c: Candidate): { glyph: string; tone: Tone; bold: boolean; tags: string } {
  const tags = [c.current && c.recommended ? 'hold' : c.current ? 'now' : c.recommended ? 'rec' : null, c.knee ? 'knee' : null];
  return {
    glyph: c.current ? '▶' : c.recommended ? '→' : ' ',
    tone: c.current ? 'accent' : c.knee || c.recommended ? 'ok' : 'plain',
    bold: c.recommended,
    tags: tags.filter((t) => t !== null).join(','),
  };
}

/** Steps and examples for candidate batches around the current one (and the recommended one); what the current batch buys. */
export function TradeoffPanel({ latest, recommended, width, height, focused }: TradeoffPanelProps) {
  const b = latest?.globalBatch ?? 0;
  const bSimple = latest?.smoothed?.bSimple ?? null;
  if (!latest || bSimple === null || b <= 0) {
    return (
      <Panel title="Trade-off" focused={focused} width={width} height={height}>
        <Toned tone="muted">{latest ? `no estimate: ${latest.note ?? 'waiting'}` : 'no estimate yet'}</Toned>
      </Panel>
    );
  }
  const rows = candidates(b, bSimple, Math.max(3, height - 5), recommended);
  const trusted = latest.smoothed?.trusted ?? false;
  return (
    <Panel title={`Trade-off · B_noise≈${short(bSimple)}`} focused={focused} width={width} height={height}>
      <Toned tone="muted">{` ${'batch'.padStart(6)}${'S/Smin'.padStart(7)}${'E/Emin'.padStart(7)}`}</Toned>
      {rows.map((c) => {
        const style = rowStyle(c);
        return (
          <Line key={c.batch}>
            <Toned tone={style.tone} bold={style.bold}>
              {`${style.glyph}${String(c.batch).padStart(6)}${short(c.steps).padStart(7)}${short(c.examples).padStart(7)}`}
            </Toned>
            <Toned tone="muted">{style.tags ? ` ${style.tags}` : ''}</Toned>
          </Line>
        );
      })}
      <Toned tone={trusted ? 'plain' : 'warn'}>
        {`B ${b}: ${(progressPerStep(b, bSimple) * 100).toFixed(0)}%/step · err ${short(relativeGradientError(b, bSimple))}`}
      </Toned>
    </Panel>
  );
}
