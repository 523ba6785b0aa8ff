import { Box } from 'ink';
import { modeSummary } from '../mode-summary.js';
import type { Health, StepStats } from '../../src/types.js';
import { short } from '../chart.js';
import type { RunView } from '../model.js';
import type { ConnectionState } from '../sources.js';
import { statusTone, type Status } from '../theme.js';
import { columns, fitSpans, type Span } from '../fit.js';
import { Line, Spans, Toned } from './toned.js';

export interface HeaderProps {
  readonly run: RunView | null;
  readonly runIndex: number;
  readonly runCount: number;
  readonly examplesPerSecond: number | null;
  readonly health: Health | null;
  readonly connection: ConnectionState | null;
  readonly paused: boolean;
  readonly nowMs: number;
  /** Columns the run line is fitted to (least important parts give way first); unbounded when absent. */
  readonly width?: number;
  /** Where the sidecar listens (or the one watched): said while no run has attached, when the hook needs it. */
  readonly address?: string | null;
}

function uptime(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n: number) => String(n).padStart(2, '0');
  return h > 0 ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

export function runStatus(run: RunView | null, connection: ConnectionState | null): Status {
  if (connection?.state === 'lost') return 'disconnected';
  if (!run) return 'waiting';
  if (run.info.ended) return 'ended';
  if (run.info.ranksConnected < run.info.worldSize) return 'rank-missing';
  const e = run.latest?.smoothed;
  if (!run.latest) return 'waiting';
  if (!e || e.bSimple === null) return 'no-estimate';
  return e.trusted ? 'trusted' : 'warming-up';
}

/** Run, mode, ranks, step, throughput, backend, uptime. */
export function Header(props: HeaderProps) {
  const { run, connection } = props;
  const status = runStatus(run, connection);
  const conn =
    connection?.state === 'lost'
      ? `connection to ${connection.address} lost: ${connection.reason}`
      : connection?.state === 'connecting'
        ? `connecting to ${connection.address}…`
        : null;
  if (!run) {
    return (
      <Box flexDirection="column">
        <Line>
          <Toned tone="accent" bold>
            noisescope{' '}
          </Toned>
          <Toned tone="muted">no run yet: waiting for noisescope.watch(model, optimizer)</Toned>
        </Line>
        {/* In 80 columns the keys line has no room left for the address. */}
        {conn ? (
          <Line>
            <Toned tone={statusTone(status)}>{conn}</Toned>
          </Line>
        ) : props.address ? (
          <Line>
            <Toned tone="muted">{props.address}</Toned>
          </Line>
        ) : null}
      </Box>
    );
  }
  const info = run.info;
  const ranks = info.ended ? 'ended' : `ranks ${info.ranksConnected}/${info.worldSize}`;
  const end = info.ended ? (run.latest?.unixMs ?? props.nowMs) : props.nowMs;
  // What gives way first where the line is too long: uptime, the backend (cut, then gone), throughput;
  // the mode names the run, so it stays.
  const backend = props.health ? `  · ${props.health.computeBackend}` : '';
  const line: Span[] = [
    { forms: ['noisescope '], tone: 'accent', bold: true, keep: 9 },
    { forms: [info.run], tone: 'plain', bold: true, keep: 9 },
    ...(props.runCount > 1 ? [{ forms: [` (${props.runIndex + 1}/${props.runCount} [ ])`, ''], tone: 'muted', keep: 5 } as const] : []),
    { forms: [`  ${modeSummary(info, { brief: true })}`, `  ${info.mode}`], tone: 'plain', keep: 6 },
    { forms: [`  ${ranks}`], tone: status === 'rank-missing' ? 'warn' : info.ended ? 'muted' : 'ok', keep: 9 },
    { forms: [`  step ${run.latest?.step ?? '–'}`], tone: 'plain', keep: 9 },
    { forms: [`  ${short(props.examplesPerSecond)} ex/s`, ''], tone: 'plain', keep: 4 },
    { forms: [`  up ${uptime(end - info.startedUnixMs)}`, ''], tone: 'muted', keep: 1 },
    ...(props.paused ? [{ forms: ['  PAUSED'], tone: 'warn', keep: 9 } as const] : []),
    { forms: [backend, columns(backend) > 25 ? `${[...backend].slice(0, 24).join('')}…` : backend, ''], tone: 'muted', keep: 3 },
  ];
  return (
    <Box flexDirection="column">
      <Spans spans={fitSpans(line, props.width ?? Infinity)} />
      {conn ? (
        <Line>
          <Toned tone={statusTone(status)}>{conn}</Toned>
        </Line>
      ) : (
        <EstimateLine latest={run.latest} />
      )}
    </Box>
  );
}

/** The current smoothed estimate, honest about trust. */
export function EstimateLine({ latest }: { readonly latest: StepStats | null }) {
  if (!latest) return <Toned tone="muted">waiting for the first measured step</Toned>;
  const e = latest.smoothed;
  if (latest.skipped) return <Toned tone="warn">{`step ${latest.step} skipped: ${latest.note ?? 'non-finite gradients'}`}</Toned>;
  if (!e || e.bSimple === null) return <Toned tone="warn">{`no estimate: ${latest.note ?? 'not enough batch scales yet'}`}</Toned>;
  const interval = e.interval ? ` [${short(e.interval.low)}, ${short(e.interval.high)}]` : '';
  return (
    <Line>
      <Toned tone={e.trusted ? 'accent' : 'warn'} bold>{`B_simple ${short(e.bSimple)}${interval}`}</Toned>
      <Toned tone="plain">{`  |G|² ${short(e.gradSqNorm)}  tr(Σ) ${short(e.traceSigma)}  B ${latest.globalBatch}`}</Toned>
      {e.trusted ? null : <Toned tone="warn">{'  not yet trustworthy'}</Toned>}
    </Line>
  );
}
