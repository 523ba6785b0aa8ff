import { Box } from 'ink';
import type { Health, RunInfo, StepStats } from '../../src/types.js';
import { short } from '../chart.js';
import { Line, Toned } from './toned.js';

/** How much of the model the estimate covers, when the hook left layers out (the per-example source); null when all of it. */
export function coverageNote(info: RunInfo | null): string | null {
  if (!info || info.uncoveredLayers.length === 0) return null;
  const uncovered = info.uncoveredLayers.reduce((n, l) => n + l.numel, 0);
  // Rounded down, so a model with a layer left out never reads as 100%.
  const percent = Math.floor((100 * info.parameters) / (info.parameters + uncovered));
  const count = info.uncoveredLayers.length;
  return `covers ${percent > 0 || info.parameters === 0 ? percent : '<1'}% of parameters; ${count} layer${count === 1 ? '' : 's'} not covered`;
}

/** Which batch-scale source the estimate comes from, and how much of the model it covers. */
export function SourceLine({ info, latest }: { readonly info: RunInfo | null; readonly latest: StepStats | null }) {
  const source = latest?.source ?? info?.source ?? null;
  if (!source) return null;
  const coverage = coverageNote(info);
  const detail = latest
    ? `${latest.microBatches} micro-batch${latest.microBatches === 1 ? '' : 'es'} × ${latest.ranks} rank${latest.ranks === 1 ? '' : 's'}, ${latest.levels} batch scale${latest.levels === 1 ? '' : 's'}`
    : '';
  return (
    <Line>
      <Toned tone="plain" bold>
        {'Scales: '}
      </Toned>
      <Toned tone={source === 'none' ? 'warn' : 'plain'}>{source}</Toned>
      {source === 'per-example' && info?.perExampleSampled ? <Toned tone="plain">{' (sampled)'}</Toned> : null}
      {coverage ? <Toned tone="warn">{` (${coverage})`}</Toned> : null}
      <Toned tone="muted">{detail ? ` (${detail})` : ''}</Toned>
      {source === 'none' && latest?.note ? <Toned tone="warn">{` — ${latest.note}`}</Toned> : null}
    </Line>
  );
}

/** Ingest counters, with rates from the previous health sample and the latest step's lag. */
export function HealthLine({
  health,
  previous,
  lagMs,
}: {
  readonly health: Health | null;
  readonly previous: Health | null;
  readonly lagMs: number | null;
}) {
  if (!health) return <Toned tone="muted">ingest: no health report yet</Toned>;
  const dt = previous ? (health.unixMs - previous.unixMs) / 1000 : 0;
  const rates =
    previous && dt > 0
      ? `${short((health.messages - previous.messages) / dt)} msg/s ${bytesPerSecond((health.bytes - previous.bytes) / dt)}`
      : `${health.messages} msgs`;
  const lag = lagMs === null ? '' : lagMs < 1000 ? ` lag ${Math.round(lagMs)}ms` : ` lag ${short(lagMs / 1000)}s`;
  // Only the losses that happened, so the line fits 80 columns.
  const losses = [
    [health.stepsIncomplete, 'incomplete'],
    [health.refused, 'refused'],
    [health.droppedByHooks, 'dropped'],
    [health.ranksGone, health.ranksGone === 1 ? 'rank gone' : 'ranks gone'],
  ] as const;
  const happened = losses.filter(([n]) => n > 0).map(([n, what]) => `${short(n)} ${what}`);
  return (
    <Line>
      <Toned tone="plain" bold>
        {'Ingest '}
      </Toned>
      <Toned tone="plain">{`${rates} · ${short(health.stepsCompleted)} steps`}</Toned>
      <Toned tone={happened.length ? 'warn' : 'muted'}>{` · ${happened.length ? happened.join(' · ') : 'no losses'}`}</Toned>
      <Toned tone="plain">{lag ? ` ·${lag}` : ''}</Toned>
    </Line>
  );
}

/** A replay's line instead: its log keeps no ingest counters and its steps were not just received, so no rates, losses or lag. */
export function ReplayLine({ health, speed }: { readonly health: Health | null; readonly speed: number }) {
  return (
    <Line>
      <Toned tone="plain" bold>
        {'Replay '}
      </Toned>
      <Toned tone="plain">{`${short(health?.stepsCompleted ?? 0)} steps played · ${short(speed)}× the logged pace`}</Toned>
    </Line>
  );
}

function bytesPerSecond(v: number): string {
  return v >= 1e6 ? `${short(v / 1e6)}MB/s` : `${short(v / 1e3)}kB/s`;
}

export function KeysLine({ log, address }: { readonly log: string | null; readonly address: string | null }) {
  return (
    <Line>
      {/* A training job's last line (the demo) takes the room of the long key list. */}
      <Toned tone="muted">{log ? 'q quit  ? help' : 'q quit  ? help  tab panels  l layers  p pause  r reset chart  [ ] run'}</Toned>
      {log ? <Toned tone="plain">{`  │ ${log}`}</Toned> : address ? <Toned tone="muted">{`  · ${address}`}</Toned> : null}
    </Line>
  );
}

export function Help() {
  const lines = [
    'q          quit (`serve` stops the sidecar; `dashboard` only detaches)',
    '?          show or hide this help',
    'tab, ←/→   move between the chart, trade-off and layers panels',
    'l          focus the layers table; ↑/↓ scroll, s cycles the sort key',
    'p          pause the display (the sidecar keeps ingesting)',
    'r          start the chart anew (a view reset: smoothing is the sidecar\'s)',
    '[ ]        previous / next run',
    '',
    'B_simple = tr(Σ)/|G|² estimates the critical batch. Each step makes',
    '1/(1 + B_simple/B) of the progress of an exact gradient; the relative',
    'gradient error is B_simple/B. Steps S/S_min = 1 + B_noise/B, examples',
    'E/E_min = 1 + B/B_noise: the knee B = B_noise costs 2× the minimum of both.',
    '',
    'Recommendation: ▲ increase / ▼ decrease / ■ hold the global batch = micro-',
    'batch × accumulation steps × ranks; steps/examples: predicted change to the',
    'same loss; the lr hint is a heuristic. Chart: ┃ smoothing restarted (lr or',
    'batch moved the temperature lr/B); ╭╯ ╮╰ batch changed. Trade-off: → rec.',
  ];
  return (
    <Box flexDirection="column" borderStyle="round" paddingX={1}>
      <Toned tone="accent" bold>
        Help
      </Toned>
      {lines.map((l, i) => (
        <Toned key={i} tone="plain">
          {l || ' '}
        </Toned>
      ))}
    </Box>
  );
}
