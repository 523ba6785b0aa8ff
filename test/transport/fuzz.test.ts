// The short fuzz: seeded malformed frames and adversarial messages against a real sidecar; every case
// answered cleanly, nothing thrown or rejected unhandled, and a well-behaved rank afterwards still
// gets exact statistics. The long run: `noisescope bench fuzz --cases 5000`.
import { filter, firstValueFrom, take, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSidecar, type Sidecar } from '../../src/index.js';
import { formatFuzzReport, fuzzSidecar } from '../../src/bench/fuzz-grpc.js';
import { accumulationStep, connect, hello, RankStream } from '../support/rank-client.js';

const MICRO = [
  [4, 1, 2],
  [5, 1.2, 2.5],
  [3, 0.8, 1.5],
  [4.5, 1, 2],
];
const ACCUMULATED = [24, 6.4, 11.2];

let sidecar: Sidecar;
const escaped: unknown[] = [];
const record = (error: unknown) => void escaped.push(error);

beforeAll(async () => {
  process.on('unhandledRejection', record);
  process.on('uncaughtException', record);
  // A small runs limit so the floods reach it (and ended runs are forgotten to make room).
  sidecar = await startSidecar({ port: 0, healthIntervalMs: 50, limits: { runs: 48 } });
});
afterAll(async () => {
  await sidecar.close();
  process.off('unhandledRejection', record);
  process.off('uncaughtException', record);
});

describe('fuzzing the gRPC surface', () => {
  it('answers every malformed frame and adversarial message with a status or Refusal, and still serves a good rank exactly', async () => {
    const report = await fuzzSidecar(sidecar.address, { seed: 8, cases: 500, concurrency: 8, maxMessageBytes: sidecar.limits.maxMessageBytes });
    expect(report.tried, formatFuzzReport(report)).toBe(500);
    expect(report.unclean, formatFuzzReport(report)).toEqual([]);
    expect(report.clean).toBe(report.tried);
    // The seed reaches every kind of case at least once.
    for (const [kind, count] of Object.entries(report.byKind)) expect(count.tried, kind).toBeGreaterThan(0);
    expect(escaped).toEqual([]);

    const client = connect(sidecar.address);
    try {
      const got = firstValueFrom(sidecar.stats$.pipe(filter((s) => s.run === 'after-fuzz'), take(3), toArray()));
      const rank = new RankStream(client);
      rank.send(hello({ run: 'after-fuzz' }));
      for (let step = 0; step < 3; step++) for (const m of accumulationStep(step, MICRO, ACCUMULATED)) rank.send(m);
      const steps = await got;
      // The two-batch formulas on the totals (micro-batch i is k·h_i in the optimizer's units).
      const ySmall = (16 * MICRO.flat().reduce((a, b) => a + b, 0)) / 4;
      const yBig = ACCUMULATED.reduce((a, b) => a + b, 0);
      for (const s of steps) {
        expect(s.raw?.traceSigma).toBeCloseTo((ySmall - yBig) / (1 / 16 - 1 / 64), 9);
        expect(s.raw?.gradSqNorm).toBeCloseTo((64 * yBig - 16 * ySmall) / (64 - 16), 9);
      }
      expect(rank.refusals()).toEqual([]);
      rank.end();
    } finally {
      client.close();
    }
    expect(escaped).toEqual([]);
  }, 60_000);
});
