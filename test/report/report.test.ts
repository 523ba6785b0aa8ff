// `noisescope report`: a run logged by a real sidecar over real gRPC, drawn by the built CLI;
// the SVG is parsed and read back through its own axes, and must give the log's numbers.
import { spawnSync } from 'node:child_process';
import { appendFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gaussianGradients, SeededRandom, simulateSyntheticStep } from '../../src/bench/synthetic-gradients.js';
import { num } from '../../src/cli/format.js';
import { startSidecar, type StepStats } from '../../src/index.js';
import { CSV_COLUMNS } from '../../src/report/report-csv.js';
import { reportRun } from '../../src/report/report-data.js';
import { renderReportSvg } from '../../src/report/render-report-svg.js';
import { findPngRenderer } from '../../src/report/svg-to-png.js';
import { readRunLog, type RunLog } from '../../src/runlog/read-run-log.js';
import { runLogFileName } from '../../src/runlog/run-log-file-name.js';
import { runInfo, stepStats } from '../runlog/fixtures.js';
import { CLI } from '../support/cli-process.js';
import { connect, hello, RankStream, syntheticStepMessages } from '../support/rank-client.js';
import { byId, descendants, parseSvg, pathPoints, readAxis, textOf, withClass, type SvgNode } from './svg-tree.js';

const RUN = 'reported';
const STEPS = 80;
const BATCH_CHANGE = 50; // the global batch goes 32 → 64 here, as an adaptive run would
const LAYERS = [
  { name: 'encoder.weight', numel: 512, gradSqNorm: 1, bSimple: 100 },
  { name: 'encoder.bias', numel: 32, gradSqNorm: 0.25, bSimple: 50 },
  { name: 'head.weight', numel: 256, gradSqNorm: 0.5, bSimple: 400 },
];
let dir = '';
let path = '';
let log: RunLog;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'noisescope-report-'));
  path = join(dir, runLogFileName(RUN));
  const sidecar = await startSidecar({ port: 0, smoothing: { beta: 0.9 }, policy: { window: 3 }, runLog: { dir, layersEvery: 5 } });
  let seen = 0;
  const sub = sidecar.stats$.subscribe(() => seen++);
  const client = connect(sidecar.address);
  const random = new SeededRandom(7);
  const source = gaussianGradients(random, LAYERS);
  const rank = new RankStream(client);
  rank.send(hello({ run: RUN, layers: [...source.layers], optimizer: 'SGD', session: 's' }));
  for (let step = 0; step < STEPS; step++) {
    const microExamples = step < BATCH_CHANGE ? [[16, 16]] : [[32, 32]];
    for (const m of syntheticStepMessages(simulateSyntheticStep(random, source, { name: RUN, microExamples, allReduce: false }, step), 0)) rank.send(m);
  }
  rank.send({ goodbye: { dropped: 0 } });
  rank.end();
  const deadline = Date.now() + 20_000;
  while (rank.status === null || seen < STEPS) {
    if (Date.now() > deadline) throw new Error(`the logged run did not finish: ${seen} of ${STEPS} steps`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  sub.unsubscribe();
  client.close();
  await sidecar.close();
  log = await readRunLog(path);
  await appendFile(path, '{"v":1,"type":"step","unixMs":1700000'); // a crash mid-line
});
afterAll(() => rm(dir, { recursive: true, force: true }));

function cli(...args: string[]) {
  const result = spawnSync(process.execPath, [CLI, 'report', ...args], { encoding: 'utf8', cwd: dir });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

const loggedSteps = (): StepStats[] => log.records.flatMap((r) => (r.type === 'step' ? [r.stats] : []));
const close = (got: number, want: number, relative: number) => expect(Math.abs(got - want)).toBeLessThanOrEqual(relative * Math.abs(want));

describe('noisescope report', () => {
  let svg = '';
  let root: SvgNode;
  beforeAll(async () => {
    const { code, stderr, stdout } = cli(path, '--out', 'run.svg', '--csv', 'run.csv');
    expect([code, stderr]).toEqual([0, expect.stringMatching(/reported\.ndjson:\d+: torn last line \(\d+ bytes, a write cut short by a crash\) skipped/)]);
    expect(stdout).toContain(`wrote SVG run.svg (run ${RUN}, ${STEPS} steps)`);
    svg = await readFile(join(dir, 'run.svg'), 'utf8');
    root = parseSvg(svg);
  });

  it('writes a well-formed SVG whose title names the run and its model facts', () => {
    expect(root.name).toBe('svg');
    const title = textOf(byId(root, 'title'));
    expect(title).toContain(`run ${RUN}`);
    expect(title).toContain('SGD · 800 parameters in 3 layers · 1 rank · source: accumulation · norms mode');
    expect(title).toContain(`steps 0–${STEPS - 1} (${STEPS} measured)`);
    const last = loggedSteps().at(-1)!;
    expect(title).toContain(`final B_simple ≈ ${num(last.smoothed!.bSimple)}`);
  });

  it('draws the smoothed B_simple, its band and the single-step points where the log puts them, read back through the axis ticks', () => {
    const x = readAxis(byId(root, 'b-simple-x-axis'));
    const y = readAxis(byId(root, 'b-simple-y-axis'));
    expect(byId(root, 'b-simple-y-axis').children.filter((n) => n.attributes.class === 'tick').length).toBeGreaterThanOrEqual(3);
    const logged = loggedSteps().filter((s) => s.smoothed?.bSimple != null);
    expect(logged.length).toBeGreaterThan(STEPS / 2);
    const drawn = pathPoints(byId(root, 'b-simple-smoothed').attributes.d!).filter((p) => p !== null);
    expect(drawn).toHaveLength(logged.length);
    drawn.forEach(([px, py], i) => {
      expect(Math.round(x(px))).toBe(logged[i]!.step);
      close(y(py), logged[i]!.smoothed!.bSimple!, 0.005);
    });
    const dots = byId(root, 'b-simple-raw').children;
    expect(dots.length).toBeGreaterThan(STEPS / 2);
    const raw = new Map(loggedSteps().map((s) => [s.step, s.raw?.bSimple ?? null]));
    for (const dot of dots) close(y(Number(dot.attributes.cy)), raw.get(Number(dot.attributes['data-step']))!, 0.005);
    expect(withClass(byId(root, 'b-simple-band'), 'band').length).toBeGreaterThan(0);
  });

  it('draws the global batch over steps and a marker at every logged recommendation', () => {
    const x = readAxis(byId(root, 'batch-x-axis'));
    const y = readAxis(byId(root, 'batch-y-axis'));
    const line = pathPoints(byId(root, 'batch-line').attributes.d!).map((p) => [Math.round(x(p![0])), Math.round(y(p![1]))]);
    expect(line).toEqual([[0, 32], [BATCH_CHANGE, 32], [BATCH_CHANGE, 64], [STEPS - 1, 64]]);
    const advice = log.records.flatMap((r) => (r.type === 'recommendation' ? [r.recommendation] : []));
    expect(advice.length).toBeGreaterThan(0);
    const markers = withClass(root, 'recommendation').map((m) => {
      const [, tx, ty] = /translate\(([-\d.]+),([-\d.]+)\)/.exec(m.attributes.transform!)!;
      return { step: Math.round(x(Number(tx))), batch: Math.round(y(Number(ty))), action: m.attributes.class!.split(' ')[1] };
    });
    expect(markers).toEqual(advice.map((r) => ({ step: r.step, batch: r.recommendedGlobalBatch, action: r.action })));
  });

  it('draws a heat strip row per layer, largest first, each cell titled with the logged per-layer B_simple', () => {
    const records = log.records.flatMap((r) => (r.type === 'layers' ? [r.layers] : []));
    expect(records.length).toBeGreaterThan(5);
    const cells = withClass(root, 'cell');
    expect(cells).toHaveLength(records.length * LAYERS.length);
    expect([...new Set(cells.map((c) => c.attributes['data-layer']))]).toEqual(['encoder.weight', 'head.weight', 'encoder.bias']);
    for (const cell of cells) {
      const record = records.find((r) => r.step === Number(cell.attributes['data-step']))!;
      const layer = record.layers.find((l) => l.name === cell.attributes['data-layer'])!;
      const title = cell.children.find((c) => c.name === 'title')!.text;
      expect(title).toBe(`${layer.name} at step ${record.step}: ${layer.bSimple === null ? 'not estimable (|G|² ≤ 0 so far)' : `B_simple ${num(layer.bSimple)}`}`);
    }
    expect(byId(root, 'layer-colour-bar').attributes['data-scale']).toBe('log');
  });

  it('writes every logged step to the CSV, numbers as logged and unbounded interval ends as inf', async () => {
    const [header, ...rows] = (await readFile(join(dir, 'run.csv'), 'utf8')).trimEnd().split('\n');
    expect(header).toBe(CSV_COLUMNS.join(','));
    expect(rows).toHaveLength(STEPS);
    const col = (name: (typeof CSV_COLUMNS)[number]) => CSV_COLUMNS.indexOf(name);
    rows.forEach((row, i) => {
      const cells = row.split(',');
      const s = loggedSteps()[i]!;
      expect(Number(cells[col('step')])).toBe(s.step);
      expect(Number(cells[col('global_batch')])).toBe(s.globalBatch);
      expect(cells[col('b_simple')]).toBe(s.smoothed?.bSimple == null ? '' : String(s.smoothed.bSimple));
      const high = s.smoothed?.interval?.high;
      expect(cells[col('b_simple_high')]).toBe(high === undefined ? '' : high === Infinity ? 'inf' : String(high));
      expect(cells[col('raw_trace_sigma')]).toBe(String(s.raw!.traceSigma));
    });
  });

  it('is deterministic: the same log gives the same bytes', () => {
    expect(cli(path, '--out', 'again.svg').code).toBe(0);
    return expect(readFile(join(dir, 'again.svg'), 'utf8')).resolves.toBe(svg);
  });

  it('--png renders through an SVG renderer when the machine has one, and otherwise says so clearly (the SVG and the CSV are kept)', async () => {
    const { code, stderr } = cli(path, '--png', 'run.png', '--csv', 'beside-png.csv');
    if (findPngRenderer() === null) {
      expect([code, stderr]).toEqual([1, expect.stringMatching(/--png needs an SVG renderer and none was found \(tried rsvg-convert, inkscape, magick, convert.*the SVG was written to run\.svg/)]);
    } else {
      expect(code).toBe(0);
      expect((await readFile(join(dir, 'run.png'))).subarray(1, 4).toString()).toBe('PNG');
    }
    expect(parseSvg(await readFile(join(dir, 'run.svg'), 'utf8')).name).toBe('svg');
    expect(await readFile(join(dir, 'beside-png.csv'), 'utf8')).toBe(await readFile(join(dir, 'run.csv'), 'utf8'));
  });

  it('refuses --png with the SVG on stdout before writing anything', () => {
    expect(cli(path, '--out', '-', '--png', 'x.png')).toMatchObject({ code: 2, stdout: '', stderr: expect.stringContaining('--png renders the SVG from a file') });
  });
});

describe('noisescope report refuses bad input with a clear message', () => {
  it.each([
    ['a missing file', async () => join(dir, 'nope.ndjson'), 1, /cannot read run log .*nope\.ndjson/],
    ['a file that is not a run log', async () => write('notes.txt', 'hello\nworld\n'), 1, /notes\.txt is not a run log: none of its 2 lines is a JSON record/],
    ['an empty file', async () => write('empty.ndjson', ''), 1, /empty\.ndjson is empty: no run log records to report/],
    ['JSON that is not a run log record', async () => write('other.ndjson', '{"hello": 1}\n'), 1, /other\.ndjson:1: not a run log record/],
    ['a run with no measured step', async () => write('started.ndjson', `${(await readFile(path, 'utf8')).split('\n')[0]}\n`), 1, /run 'reported' has no measured step yet: nothing to plot/],
  ])('%s', async (_, file, code, message) => {
    const result = cli(await file(), '--out', 'x.svg');
    expect([result.code, result.stderr]).toEqual([code, expect.stringMatching(message)]);
  });

  it('asks for an output, and for one log file', () => {
    expect(cli(path)).toMatchObject({ code: 2, stderr: expect.stringContaining('report needs somewhere to write: --out FILE.svg, --csv FILE.csv or --png FILE.png') });
    expect(cli('--out', 'x.svg')).toMatchObject({ code: 2, stderr: expect.stringContaining('report takes one run log file, got none') });
  });

  it('names the runs of a log that holds several when none is chosen', async () => {
    const two = await write('two.ndjson', [runInfo('a'), runInfo('b')].map((info) => JSON.stringify({ v: 1, type: 'run', unixMs: 1, info })).join('\n'));
    expect(cli(two, '--out', 'x.svg')).toMatchObject({ code: 1, stderr: expect.stringContaining("holds 2 runs ('a', 'b'): choose one with --run") });
    expect(cli(two, '--out', 'x.svg', '--run', 'c')).toMatchObject({ code: 1, stderr: expect.stringContaining("has no run 'c'") });
  });
});

describe('renderReportSvg on a long run', () => {
  it('thins 100,000 steps to a small file, on a log axis read back exactly, and says so', () => {
    const steps = Array.from({ length: 100_000 }, (_, i) => stepStats('long', i));
    const figure = renderReportSvg({ run: 'long', info: runInfo('long'), steps, recommendations: [], layers: [] });
    expect(figure.svg.length).toBeLessThan(400_000);
    expect(figure.notes).toContain('every 67th of 100000 steps drawn (the last always)');
    const root = parseSvg(figure.svg);
    const axis = byId(root, 'b-simple-y-axis');
    expect(axis.attributes['data-scale']).toBe('log');
    const y = readAxis(axis);
    const x = readAxis(byId(root, 'b-simple-x-axis'));
    const drawn = pathPoints(byId(root, 'b-simple-smoothed').attributes.d!).filter((p) => p !== null);
    expect(drawn.length).toBeLessThanOrEqual(1501);
    const [lx, ly] = drawn.at(-1)!;
    expect(Math.round(x(lx))).toBe(99_999);
    close(y(ly), (96 + 99_999) / 1.5, 0.005);
    expect(textOf(byId(root, 'panel-layers'))).toContain('no per-layer records in this log');
  });

  it.each([
    ['one step without an estimate', [stepStats('edge', 5, { raw: null, smoothed: null, note: 'no second batch scale' })]],
    ['negative single-step values and an interval unbounded both ways', [0, 1, 2].map((i) => stepStats('edge', i, { raw: { gradSqNorm: 1, traceSigma: -5, bSimple: -5, interval: null, trusted: false }, smoothed: { gradSqNorm: 1, traceSigma: 30, bSimple: 30 + i, interval: { low: -Infinity, high: Infinity }, trusted: false } }))],
  ])('draws %s without a NaN or an infinity in the file', (_, steps) => {
    const { svg } = renderReportSvg({ run: 'edge', info: null, steps, recommendations: [], layers: [] });
    expect(svg).not.toMatch(/NaN|Infinity/);
    const root = parseSvg(svg);
    expect(textOf(byId(root, 'title'))).toContain('no run record in the log');
    expect(readAxis(byId(root, 'b-simple-y-axis'))(Number(byId(root, 'b-simple-y-axis').children[0]!.attributes.transform!.match(/,([-\d.]+)\)/)![1]))).toBe(Number(byId(root, 'b-simple-y-axis').children[0]!.attributes['data-value']));
  });

  it('reports a one-run log through reportRun as the CLI does (steps ordered, a re-logged step kept once)', () => {
    const records = [3, 1, 2, 3].map((step, i) => ({ v: 1 as const, type: 'step' as const, unixMs: i, stats: stepStats('r', step, { globalBatch: 10 + i }) }));
    const run = reportRun({ path: 'mem', records, torn: [] });
    expect(run.steps.map((s) => [s.step, s.globalBatch])).toEqual([[1, 11], [2, 12], [3, 13]]);
  });
});

async function write(name: string, content: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, content);
  return file;
}
