import { Subject } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { readRunLog } from '../../src/runlog/read-run-log.js';
import { writeRunLog } from '../../src/runlog/write-run-log.js';
import type { RunInfo, StepStats } from '../../src/types.js';
import { runInfo, stepStats, afterEachTest } from './fixtures.js';

const { later, scratch } = afterEachTest();

async function setup(maxBufferedBytes?: number) {
  const dir = await scratch();
  const runs = new Subject<readonly RunInfo[]>();
  const stats = new Subject<StepStats>();
  const writer = writeRunLog({ runs$: runs, stats$: stats }, { dir, ...(maxBufferedBytes ? { maxBufferedBytes } : {}) });
  later(() => writer.close());
  return { writer, runs, stats };
}

describe('run log under load', () => {
  it('writes a stream of 10,000 steps in order, each once', async () => {
    const { writer, runs, stats } = await setup(64 << 20); // room for all of it, however slow the disk
    runs.next([runInfo('long')]);
    for (let step = 0; step < 10_000; step++) {
      stats.next(stepStats('long', step));
      if (step % 100 === 99) await new Promise((resolve) => setImmediate(resolve)); // ingest yields between batches
    }
    await writer.close();
    const log = await readRunLog(writer.pathFor('long'));
    expect(log.torn).toEqual([]);
    const steps = log.records.flatMap((r) => (r.type === 'step' ? [r.stats.step] : []));
    expect(steps).toEqual(Array.from({ length: 10_000 }, (_, i) => i));
    expect(writer.counters).toEqual({ written: 10_001, dropped: 0 });
  });

  it('a full buffer drops lines, counts them, and says so in one log-gap record where they were lost', async () => {
    const { writer, runs, stats } = await setup(16 * 1024); // a few steps' worth
    runs.next([runInfo('squeezed')]);
    // All in one tick: the disk cannot drain anything in between.
    for (let step = 0; step < 1000; step++) stats.next(stepStats('squeezed', step));
    const kept = 1000 - writer.counters.dropped;
    // The backlog drains, then the gap record follows it.
    await expect.poll(() => writer.counters.written, { timeout: 10_000 }).toBe(1 + kept + 1);
    stats.next(stepStats('squeezed', 1000)); // logged again
    await writer.close();

    const log = await readRunLog(writer.pathFor('squeezed'));
    const gaps = log.records.filter((r) => r.type === 'log-gap');
    expect(gaps).toEqual([
      expect.objectContaining({ v: 1, type: 'log-gap', run: 'squeezed', dropped: writer.counters.dropped, fromUnixMs: expect.any(Number) }),
    ]);
    expect(writer.counters.dropped).toBeGreaterThan(900);
    const steps = log.records.flatMap((r) => (r.type === 'step' ? [r.stats.step] : []));
    // The first `kept` steps, then the gap, then the step that came after it.
    expect(steps).toEqual([...Array.from({ length: kept }, (_, i) => i), 1000]);
    expect(log.records.findIndex((r) => r.type === 'log-gap')).toBe(1 + kept);
    expect(writer.counters.written).toBe(1 + kept + 1 + 1);
  });

  it('writes a gap still pending at close', async () => {
    const { writer, runs, stats } = await setup(4 * 1024);
    runs.next([runInfo('closing')]);
    for (let step = 0; step < 100; step++) stats.next(stepStats('closing', step));
    await writer.close();
    const log = await readRunLog(writer.pathFor('closing'));
    expect(log.records.at(-1)).toMatchObject({ type: 'log-gap', dropped: writer.counters.dropped });
    expect(writer.counters.dropped).toBeGreaterThan(0);
    expect(log.records.filter((r) => r.type === 'step').length + writer.counters.dropped).toBe(100);
  });
});
