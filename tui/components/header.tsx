import { Box } from 'ink';
import type { Health, StepStats } from '../../src/types.js';
import { short } from '../chart.js';
import type { RunView } from '../model.js';
import type { ConnectionState } from '../sources.js';
import { statusTone, type Status } from '../theme.js';
import { Line, Toned } from './toned.js';

export interface HeaderProps {
  readonly run: RunView | null;
  readonly runIndex: number;
  readonly runCount: number;
  readonly examplesPerSecond: number | null;
  readonly health: Health | null;
  readonly connection: ConnectionState | null;
  readonly paused: boolean;
  readonly nowMs: number;
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

/** Run, ranks, step, throughput, backend, uptime. */
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
          <Toned tone="muted">no run yet — waiting for a training job to attach (noisescope.watch(model, optimizer))</Toned>
        </Line>
        {conn ? (
          <Line>
            <Toned tone={statusTone(status)}>{conn}</Toned>
          </Line>
        ) : null}
      </Box>
    );
  }
  const info = run.info;
  const ranks = info.ended ? 'ended' : `ranks ${info.ranksConnected}/${info.worldSize}`;
  const end = info.ended ? (run.latest?.unixMs ?? props.nowMs) : props.nowMs;
  return (
    <Box flexDirection="column">
      <Line>
        <Toned tone="accent" bold>
          noisescope{' '}
        </Toned>
        <Toned tone="plain" bold>
          {info.run}
        </Toned>
        {props.runCount > 1 ? <Toned tone="muted">{` (${props.runIndex + 1}/${props.runCount} [ ])`}</Toned> : null}
        <Toned tone={status === 'rank-missing' ? 'warn' : info.ended ? 'muted' : 'ok'}>{`  ${ranks}`}</Toned>
        <Toned tone="plain">{`  step ${run.latest?.step ?? '–'}`}</Toned>
        <Toned tone="plain">{`  ${short(props.examplesPerSecond)} ex/s`}</Toned>
        <Toned tone="muted">{`  up ${uptime(end - info.startedUnixMs)}`}</Toned>
        {props.paused ? <Toned tone="warn">{'  PAUSED'}</Toned> : null}
        {props.health ? <Toned tone="muted">{`  · ${props.health.computeBackend}`}</Toned> : null}
      </Line>
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
