import { appendFile, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Subject } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { readRunLog } from '../../src/runlog/read-run-log.js';
import { runLogFileName } from '../../src/runlog/run-log-file-name.js';
import { writeRunLog, type RunLogSources } from '../../src/runlog/write-run-log.js';
import type { LayerStats, Recommendation, RunInfo, StepStats } from '../../src/types.js';
import { layerStats, recommendation, runInfo, stepStats, afterEachTest } from './fixtures.js';

const { later, scratch } = afterEachTest();

async function setup(options: { layersEvery?: number } = {}) {
  const dir = await scratch();
  const runs = new Subject<readonly RunInfo[]>();
  const stats = new Subject<StepStats>();
  const layers = new Subject<LayerStats>();
  const recommendations = new Subject<Recommendation>();
  const sources: RunLogSources = {
    runs$: runs.asObservable(),
    stats$: stats.asObservable(),
    layers$: layers.asObservable(),
    recommendations$: recommendations.asObservable(),
  };
  const writer = writeRunLog(sources, { dir, ...options });
  later(() => writer.close());
  return { dir, writer, runs, stats, layers, recommendations };
}

describe('run log round trip', () => {
  it('reads back every record type exactly as the Observables emitted it, Infinity included', async () => {
    const { writer, runs, stats, layers, recommendations } = await setup({ layersEvery: 1 });
    const info = runInfo('alpha');
    const ended = runInfo('alpha', { ended: true, ranksConnected: 0 });
    runs.next([info]);
    stats.next(stepStats('alpha', 0));
    layers.next(layerStats('alpha', 0));
    stats.next(stepStats('alpha', 3, { smoothed: null, loss: 2.5 }));
    recommendations.next(recommendation('alpha', 3));
    runs.next([ended]);
    await writer.close();

    const log = await readRunLog(writer.pathFor('alpha'));
    expect(log.torn).toEqual([]);
    expect(log.records.map((r) => r.type)).toEqual(['run', 'step', 'layers', 'step', 'recommendation', 'run-ended']);
    const [run, step0, layer0, step3, rec, end] = log.records;
    const head = { v: 1, unixMs: expect.any(Number) };
    expect(run).toEqual({ ...head, type: 'run', info });
    expect(step0).toEqual({ ...head, type: 'step', stats: stepStats('alpha', 0) });
    expect(layer0).toEqual({ ...head, type: 'layers', layers: layerStats('alpha', 0) });
    expect(step3).toEqual({ ...head, type: 'step', stats: stepStats('alpha', 3, { smoothed: null, loss: 2.5 }) });
    expect(rec).toEqual({ ...head, type: 'recommendation', recommendation: recommendation('alpha', 3) });
    expect(end).toEqual({ ...head, type: 'run-ended', info: ended });
    // The infinities come back as infinities, not as null.
    expect(run?.type === 'run' && run.info.policy.maxBatch).toBe(Infinity);
    expect(step0?.type === 'step' && step0.stats.smoothed?.interval?.high).toBe(Infinity);
    expect(rec?.type === 'recommendation' && rec.recommendation.interval.high).toBe(Infinity);
  });

  it('writes Infinity as null on disk (JSON has none)', async () => {
    const { writer, runs, stats } = await setup();
    runs.next([runInfo('beta')]);
    stats.next(stepStats('beta', 0));
    await writer.close();
    const lines = (await readFile(writer.pathFor('beta'), 'utf8')).trimEnd().split('\n');
    expect(JSON.parse(lines[0]!).info.policy).toEqual({ maxBatch: null, objective: 'time' });
    expect(JSON.parse(lines[1]!).stats.smoothed.interval).toEqual({ low: 12.25, high: null });
  });

  it('puts a recommendation after the step it was made at, even when it reaches the writer first', async () => {
    const { writer, stats, recommendations } = await setup();
    // As in the sidecar: recommendations$ is computed from stats$ and can be notified first.
    recommendations.next(recommendation('order', 7));
    stats.next(stepStats('order', 7));
    await Promise.resolve();
    recommendations.next(recommendation('order', 8, { sequence: 2 })); // no step follows it: written anyway
    await writer.close();
    const log = await readRunLog(writer.pathFor('order'));
    expect(log.records.map((r) => (r.type === 'step' ? `step ${r.stats.step}` : `${r.type} ${r.type === 'recommendation' ? r.recommendation.step : ''}`))).toEqual([
      'step 7',
      'recommendation 7',
      'recommendation 8',
    ]);
  });

  it('writes a run again only when its RunInfo changes', async () => {
    const { writer, runs } = await setup();
    const info = runInfo('gamma');
    runs.next([info]);
    runs.next([info]);
    runs.next([{ ...info, ranksConnected: 1 }]);
    await writer.close();
    const log = await readRunLog(writer.pathFor('gamma'));
    expect(log.records.map((r) => r.type === 'run' && r.info.ranksConnected)).toEqual([2, 1]);
  });

  it('logs per-layer estimates every layersEvery steps of each run', async () => {
    const { writer, runs, layers } = await setup({ layersEvery: 10 });
    runs.next([runInfo('delta')]);
    for (let step = 5; step < 40; step++) layers.next(layerStats('delta', step));
    await writer.close();
    const log = await readRunLog(writer.pathFor('delta'));
    expect(log.records.flatMap((r) => (r.type === 'layers' ? [r.layers.step] : []))).toEqual([5, 15, 25, 35]);
  });

  it('gives two runs two files, also when their names sanitise alike', async () => {
    const { dir, writer, runs, stats } = await setup();
    const names = ['exp/1', 'exp:1', 'Exp_1', 'exp_1'];
    runs.next(names.map((n) => runInfo(n)));
    names.forEach((n, i) => stats.next(stepStats(n, i)));
    await writer.close();
    const files = await readdir(dir);
    expect(files).toHaveLength(4);
    expect(files.sort()).toEqual(names.map(runLogFileName).sort());
    for (const [i, n] of names.entries()) {
      const log = await readRunLog(join(dir, runLogFileName(n)));
      expect(log.records.map((r) => (r.type === 'step' ? `${r.stats.run}@${r.stats.step}` : r.type))).toEqual(['run', `${n}@${i}`]);
    }
  });
});

describe('torn lines', () => {
  it('reports a torn last line instead of failing, and keeps every whole record', async () => {
    const { writer, runs, stats } = await setup();
    runs.next([runInfo('torn')]);
    stats.next(stepStats('torn', 0));
    await writer.close();
    const path = writer.pathFor('torn');
    const whole = await readFile(path, 'utf8');
    const cut = JSON.stringify({ v: 1, type: 'step', unixMs: 1, stats: stepStats('torn', 1) }).slice(0, 57);
    await appendFile(path, cut);
    const log = await readRunLog(path);
    expect(log.records.map((r) => r.type)).toEqual(['run', 'step']);
    expect(log.torn).toEqual([{ line: 3, offset: Buffer.byteLength(whole), bytes: 57, last: true }]);
  });

  it('a writer reopening a file with a torn last line starts on a new line', async () => {
    const dir = await scratch();
    const runs = new Subject<readonly RunInfo[]>();
    const stats = new Subject<StepStats>();
    const first = writeRunLog({ runs$: runs, stats$: stats }, { dir });
    stats.next(stepStats('resumed', 0));
    await first.close();
    await appendFile(first.pathFor('resumed'), '{"v":1,"type":"st'); // the crash
    const second = writeRunLog({ runs$: runs, stats$: stats }, { dir });
    stats.next(stepStats('resumed', 1));
    await second.close();
    const log = await readRunLog(second.pathFor('resumed'));
    expect(log.records.map((r) => r.type === 'step' && r.stats.step)).toEqual([0, 1]);
    expect(log.torn).toEqual([expect.objectContaining({ line: 2, last: false })]);
  });

  it('reads a run written before uncovered layers existed as covering every parameter', async () => {
    const dir = await scratch();
    const path = join(dir, 'older.ndjson');
    const { uncoveredLayers, ...older } = runInfo('older');
    expect(uncoveredLayers.length).toBeGreaterThan(0);
    await writeFile(path, `${JSON.stringify({ v: 1, type: 'run', unixMs: 1, info: older })}\n`);
    const [record] = (await readRunLog(path)).records;
    expect(record?.type === 'run' && record.info.uncoveredLayers).toEqual([]);
  });

  it('refuses a line that is JSON but not a record, naming the file and line', async () => {
    const dir = await scratch();
    const path = join(dir, 'odd.ndjson');
    const ok = JSON.stringify({ v: 1, type: 'step', unixMs: 1, stats: stepStats('odd', 0) });
    await writeFile(path, `${ok}\n{"v":1,"type":"shard","unixMs":1}\n`);
    await expect(readRunLog(path)).rejects.toThrow(`${path}:2: not a run log record: unknown "type" "shard"`);
    await writeFile(path, `${ok.replace('"v":1', '"v":2')}\n`);
    await expect(readRunLog(path)).rejects.toThrow(/:1: not a run log record: schema version 2 is newer/);
    await writeFile(path, '{"v":1,"type":"step","unixMs":1,"stats":{"run":"odd"}}\n');
    await expect(readRunLog(path)).rejects.toThrow(/"stats.step" must be a number/);
    await expect(readRunLog(join(dir, 'missing.ndjson'))).rejects.toThrow(/cannot read run log .*missing\.ndjson/);
  });
});
