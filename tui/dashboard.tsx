// The one stateful container: subscribes to the sources, folds them into a
// model, throttles renders, handles keys. Every child is presentational.
import { Box, useApp, useInput, useStdout } from 'ink';
import { useEffect, useMemo, useRef, useState } from 'react';
import { asyncScheduler, auditTime, EMPTY, map, merge, scan, startWith, type SchedulerLike } from 'rxjs';
import { ChartPanel } from './components/chart-panel.js';
import { DiversityLine, hasDiversity } from './components/diversity-line.js';
import { Header } from './components/header.js';
import { LAYER_SORTS, layerRows, LayersPanel, type LayerSort } from './components/layers-panel.js';
import { RecommendationPanel } from './components/recommendation-panel.js';
import { Help, HealthLine, KeysLine, ReplayLine, SourceLine } from './components/status-lines.js';
import { TradeoffPanel } from './components/tradeoff-panel.js';
import { EMPTY_MODEL, examplesPerSecond, recentRestart, reduce, type DashboardEvent, type DashboardModel } from './model.js';
import { RECOMMENDATION_LINES, restartNotice } from './recommendation.js';
import type { DashboardSources } from './sources.js';

export type Focus = 'chart' | 'tradeoff' | 'layers';
const FOCUS_ORDER: readonly Focus[] = ['chart', 'tradeoff', 'layers'];

export interface DashboardProps {
  readonly sources: DashboardSources;
  /** Renders per second at most (the streams are audited to this). Default 15. */
  readonly updatesPerSecond?: number;
  /** Override the terminal size (tests); default: the stdout's, following resizes. */
  readonly columns?: number;
  readonly rows?: number;
  /** Called when the user quits with q. */
  readonly onQuit?: () => void;
  /** Where the sidecar listens (or the one watched), shown at the bottom. */
  readonly address?: string;
  /** Listen for keys (needs a TTY stdin); default true. */
  readonly keys?: boolean;
  /** A run log played back at this many times its pace: the ingest line says so, the uptime runs on the log's clock. */
  readonly replaySpeed?: number;
  readonly scheduler?: SchedulerLike;
}

/** Folds every source into one model stream, audited to at most `perSecond` values a second. */
export function dashboardModel$(sources: DashboardSources, perSecond: number, scheduler: SchedulerLike = asyncScheduler) {
  const events$ = merge(
    sources.runs$.pipe(map((runs): DashboardEvent => ({ kind: 'runs', runs }))),
    sources.stats$.pipe(map((stats): DashboardEvent => ({ kind: 'step', stats, receivedUnixMs: Date.now() }))),
    sources.layers$.pipe(map((layers): DashboardEvent => ({ kind: 'layers', layers }))),
    sources.health$.pipe(map((health): DashboardEvent => ({ kind: 'health', health }))),
    (sources.connection$ ?? EMPTY).pipe(map((connection): DashboardEvent => ({ kind: 'connection', connection }))),
    (sources.log$ ?? EMPTY).pipe(map((line): DashboardEvent => ({ kind: 'log', line }))),
    (sources.recommendations$ ?? EMPTY).pipe(map((recommendation): DashboardEvent => ({ kind: 'recommendation', recommendation }))),
  );
  return events$.pipe(scan(reduce, EMPTY_MODEL), auditTime(1000 / perSecond, scheduler), startWith(EMPTY_MODEL));
}

/** Before any run, why nothing arrives, in full: the header's line cuts the reason at 80 columns, the empty chart has room. */
function lostReason(connection: DashboardModel['connection']): string | null {
  return connection?.state === 'lost' ? `none yet, the connection is lost: ${connection.reason}` : null;
}

function useTerminalSize(columns?: number, rows?: number): { columns: number; rows: number } {
  const { stdout } = useStdout();
  const read = () => ({ columns: columns ?? stdout.columns ?? 80, rows: rows ?? stdout.rows ?? 24 });
  const [size, setSize] = useState(read);
  useEffect(() => {
    const onResize = () => setSize(read());
    stdout.on('resize', onResize);
    return () => void stdout.off('resize', onResize);
  }, [stdout, columns, rows]);
  return size;
}

export function Dashboard(props: DashboardProps) {
  const { exit } = useApp();
  const size = useTerminalSize(props.columns, props.rows);
  const [model, setModel] = useState<DashboardModel>(EMPTY_MODEL);
  const [paused, setPaused] = useState(false);
  const [help, setHelp] = useState(false);
  const [focus, setFocus] = useState<Focus>('chart');
  const [runIndex, setRunIndex] = useState(0);
  const [sort, setSort] = useState<LayerSort>('bSimple');
  const [scroll, setScroll] = useState(0);
  // Per run: the chart shows steps after this one (r resets the view, not the estimator).
  const [chartFrom, setChartFrom] = useState<ReadonlyMap<string, number>>(new Map());
  const latest = useRef<DashboardModel>(EMPTY_MODEL);
  const pausedRef = useRef(false);

  const perSecond = props.updatesPerSecond ?? 15;
  useEffect(() => {
    const subscription = dashboardModel$(props.sources, perSecond, props.scheduler).subscribe((m) => {
      latest.current = m;
      if (!pausedRef.current) setModel(m);
    });
    return () => subscription.unsubscribe();
  }, [props.sources, perSecond, props.scheduler]);

  const runCount = model.runs.length;
  const index = Math.min(runIndex, Math.max(0, runCount - 1));
  const run = model.runs[index] ?? null;
  const layerCount = run?.layers?.layers.length ?? 0;

  // Layout for the current size: fixed lines (header 2, recommendation, scales, diversity on dense
  // and sketch steps, ingest, keys, one spare) + the bottom panels + a chart that takes what is left.
  const width = Math.max(60, size.columns);
  const fixedLines = 2 + RECOMMENDATION_LINES + 1 + 1 + 1 + 1 + (hasDiversity(run?.latest ?? null) ? 1 : 0);
  const bottomHeight = Math.max(8, Math.min(14, Math.floor((size.rows - fixedLines + 1) / 2)));
  const chartHeight = Math.max(6, size.rows - fixedLines - bottomHeight);
  const leftWidth = Math.min(36, Math.floor(width * 0.43));
  const rows = layerRows(bottomHeight);

  // The key handler reads the latest render's values through a ref, never a stale closure.
  const current = useRef({ runCount, index, run, layerCount, rows, focus });
  current.current = { runCount, index, run, layerCount, rows, focus };

  useInput((input, key) => {
    const { runCount, index, run, layerCount, rows, focus } = current.current;
    if (input === 'q' || (key.ctrl && input === 'c')) {
      props.onQuit?.();
      exit();
      return;
    }
    if (input === '?') return setHelp((h) => !h);
    if (input === 'p') {
      pausedRef.current = !pausedRef.current;
      setPaused(pausedRef.current);
      if (!pausedRef.current) setModel(latest.current);
      return;
    }
    if (key.tab || key.rightArrow || key.leftArrow) {
      const step = key.leftArrow || key.shift ? -1 : 1;
      return setFocus((f) => FOCUS_ORDER[(FOCUS_ORDER.indexOf(f) + step + FOCUS_ORDER.length) % FOCUS_ORDER.length]!);
    }
    if (input === 'l') return setFocus('layers');
    if (input === '[' || input === ']') {
      setScroll(0);
      return setRunIndex(Math.max(0, Math.min(runCount - 1, index + (input === '[' ? -1 : 1))));
    }
    if (input === 'r' && run) {
      const last = run.history.at(-1)?.step ?? -1;
      return setChartFrom((m) => new Map(m).set(run.info.run, last));
    }
    if (focus === 'layers') {
      if (input === 's') {
        setScroll(0);
        return setSort((s) => LAYER_SORTS[(LAYER_SORTS.indexOf(s) + 1) % LAYER_SORTS.length]!);
      }
      const maxScroll = Math.max(0, layerCount - rows);
      if (key.downArrow) return setScroll((s) => Math.min(maxScroll, s + 1));
      if (key.upArrow) return setScroll((s) => Math.max(0, s - 1));
      if (key.pageDown) return setScroll((s) => Math.min(maxScroll, s + rows));
      if (key.pageUp) return setScroll((s) => Math.max(0, s - rows));
    }
  }, { isActive: props.keys ?? true });

  const from = run ? (chartFrom.get(run.info.run) ?? -1) : -1;
  const points = useMemo(() => (run ? run.history.filter((p) => p.step > from) : []), [run, from]);
  const restart = recentRestart(run);

  return (
    <Box flexDirection="column" width={width}>
      <Header
        run={run}
        runIndex={index}
        runCount={runCount}
        examplesPerSecond={run ? examplesPerSecond(run.history) : null}
        health={model.health}
        connection={model.connection}
        paused={paused}
        nowMs={props.replaySpeed === undefined ? Date.now() : (run?.latest?.unixMs ?? run?.info.startedUnixMs ?? 0)}
        width={width}
        address={props.address ?? null}
      />
      {help ? (
        <Help />
      ) : (
        <>
          <ChartPanel
            points={points}
            width={width}
            height={chartHeight}
            focused={focus === 'chart'}
            note={run ? (run.latest?.smoothed ? null : (run.latest?.note ?? null)) : lostReason(model.connection)}
            restart={restart ? restartNotice(restart) : null}
          />
          <RecommendationPanel run={run} width={width} recommending={props.sources.recommendations$ !== undefined} />
          <SourceLine info={run?.info ?? null} latest={run?.latest ?? null} />
          <DiversityLine latest={run?.latest ?? null} width={width} />
          <Box>
            <TradeoffPanel
              latest={run?.latest ?? null}
              recommended={run?.recommendation?.recommendedGlobalBatch ?? null}
              width={leftWidth}
              height={bottomHeight}
              focused={focus === 'tradeoff'}
            />
            <LayersPanel
              layers={run?.layers ?? null}
              sort={sort}
              scroll={scroll}
              width={width - leftWidth}
              height={bottomHeight}
              focused={focus === 'layers'}
            />
          </Box>
          {props.replaySpeed === undefined ? (
            <HealthLine health={model.health} previous={model.previousHealth} lagMs={run?.lagMs ?? null} />
          ) : (
            <ReplayLine health={model.health} speed={props.replaySpeed} />
          )}
        </>
      )}
      <KeysLine log={model.log} address={props.address ?? null} />
    </Box>
  );
}
