import { symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Subject } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { readRunLog } from '../../src/runlog/read-run-log.js';
import { writeRunLog, type RunLogFailure } from '../../src/runlog/write-run-log.js';
import type { RunInfo, StepStats } from '../../src/types.js';
import { runInfo, stepStats, afterEachTest } from './fixtures.js';

const { scratch } = afterEachTest();

function sources() {
  return { runs: new Subject<readonly RunInfo[]>(), stats: new Subject<StepStats>() };
}

describe('run log write errors', () => {
  it('an unusable directory is reported once per run, never thrown, and that run stops logging', async () => {
    const root = await scratch();
    await writeFile(join(root, 'a-file'), 'not a directory');
    const { runs, stats } = sources();
    const called: RunLogFailure[] = [];
    const writer = writeRunLog({ runs$: runs, stats$: stats }, { dir: join(root, 'a-file', 'runs'), onError: (f) => called.push(f) });
    const failures: RunLogFailure[] = [];
    writer.errors$.subscribe((f) => failures.push(f));
    runs.next([runInfo('doomed')]);
    stats.next(stepStats('doomed', 0));
    await expect.poll(() => failures.length).toBe(1);
    for (let step = 1; step < 50; step++) stats.next(stepStats('doomed', step));
    await writer.close();
    expect(failures).toEqual([
      {
        run: 'doomed',
        path: writer.pathFor('doomed'),
        code: expect.stringMatching(/^(ENOTDIR|EEXIST)$/),
        message: expect.stringMatching(/^run log for 'doomed' stopped: /),
      },
    ]);
    expect(called).toEqual(failures);
    expect(writer.counters.written).toBe(0);
  });

  it('a full disk (ENOSPC) mid-run is reported once; other runs keep logging', async () => {
    const dir = await scratch();
    const { runs, stats } = sources();
    const writer = writeRunLog({ runs$: runs, stats$: stats }, { dir });
    await symlink('/dev/full', writer.pathFor('full')); // every write to it fails with ENOSPC
    const failures: RunLogFailure[] = [];
    writer.errors$.subscribe((f) => failures.push(f));
    runs.next([runInfo('full'), runInfo('fine')]);
    for (let step = 0; step < 20; step++) {
      stats.next(stepStats('full', step));
      stats.next(stepStats('fine', step));
      await new Promise((resolve) => setImmediate(resolve));
    }
    await writer.close();
    expect(failures).toEqual([expect.objectContaining({ run: 'full', code: 'ENOSPC' })]);
    const fine = await readRunLog(writer.pathFor('fine'));
    expect(fine.records.map((r) => (r.type === 'step' ? r.stats.step : r.type))).toEqual([
      'run',
      ...Array.from({ length: 20 }, (_, i) => i),
    ]);
  });

  it('an onError callback that throws changes nothing (the sidecar keeps running)', async () => {
    const root = await scratch();
    await writeFile(join(root, 'a-file'), '');
    const { runs, stats } = sources();
    let calls = 0;
    const writer = writeRunLog(
      { runs$: runs, stats$: stats },
      {
        dir: join(root, 'a-file'),
        onError: () => {
          calls++;
          throw new Error('careless callback');
        },
      },
    );
    stats.next(stepStats('careless', 0));
    await expect.poll(() => calls).toBe(1);
    await writer.close();
  });

  it('a source that errors is reported, and the other sources keep logging', async () => {
    const dir = await scratch();
    const { runs, stats } = sources();
    const writer = writeRunLog({ runs$: runs, stats$: stats }, { dir });
    const failures: RunLogFailure[] = [];
    writer.errors$.subscribe((f) => failures.push(f));
    runs.error(new Error('ingest broke'));
    stats.next(stepStats('survivor', 0));
    await writer.close();
    expect(failures).toEqual([expect.objectContaining({ run: null, message: 'run log stopped: a source failed: ingest broke' })]);
    expect((await readRunLog(writer.pathFor('survivor'))).records).toHaveLength(1);
  });

  it.each([
    [{ dir: '' }, /runLog.dir must be a directory path, got ""/],
    [{ dir: '/tmp/x', maxBufferedBytes: 0 }, /maxBufferedBytes must be an integer > 0, got 0/],
    [{ dir: '/tmp/x', layersEvery: -1 }, /layersEvery must be an integer ≥ 0, got -1/],
  ])('refuses bad options %j with a clear error', (options, message) => {
    const { runs, stats } = sources();
    expect(() => writeRunLog({ runs$: runs, stats$: stats }, options)).toThrow(message);
  });
});
