// The run's mode (norms / dense / sketch with its m) and source, where a user reads them: serve's run line
// (plain and --json) and `noisescope replay`, from a sketch run sent over real gRPC to the built CLI.
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { filter, firstValueFrom } from 'rxjs';
import { afterAll, describe, expect, it } from 'vitest';
import { formatRun } from '../../src/cli/format.js';
import { startSidecar } from '../../src/index.js';
import { modeSummary } from '../../tui/mode-summary.js';
import type { RankMessage } from '../../src/transport/generated/noisescope/v1/RankMessage.js';
import { runLogFileName } from '../../src/runlog/run-log-file-name.js';
import { microGradients } from '../support/dense-gradients.js';
import { CLI, cliEachTest } from '../support/cli-process.js';
import { connect, encodeDense, hello, LAYERS, RankStream } from '../support/rank-client.js';
import { runInfo } from '../tui/fixtures.js';

/** As the hook declares sketch_size=1024, dtype="fp16": fc1.bias (128 elements) fits in m and travels exactly. */
const SIZES = [1024, 128, 1024];
const SKETCH = 'sketch m=1024 fp16 (1 of 3 layers exact)';
const sketchHello = (run: string) => hello({ run, mode: 'MODE_SKETCH', sketch: { sizes: SIZES, dtype: 'DTYPE_F16' } });

/** One step of two micro-batches, each layer's sketch in its own message (values exact in fp16). */
function sketchStep(step: number): RankMessage[] {
  const sketches = microGradients(step + 7, 2, SIZES, { halfExact: true });
  const shards = sketches.flatMap((layers, microBatch) =>
    layers.map((values, layer): RankMessage => ({
      shard: { step, microBatch, examples: 8, layer, microBatches: 2, sketch: { seed: 99 + step, size: values.length, dtype: 'DTYPE_F16', data: encodeDense(values, 'DTYPE_F16'), layers: 1 } },
    })),
  );
  return [...shards, { stepEnd: { step, microBatches: 2, localExamples: 16, globalExamples: 16, lr: 0.1, loss: 0.5 } }];
}

describe('the mode in words', () => {
  it('names norms and dense as they are, and a sketch by its m, its wire dtype and the layers that fit in m', () => {
    expect(modeSummary(runInfo({ mode: 'norms' }))).toBe('norms');
    expect(modeSummary(runInfo({ mode: 'dense' }))).toBe('dense');
    const sketch = (sizes: number[], dtype: 'DTYPE_F32' | 'DTYPE_F16' | 'DTYPE_BF16' = 'DTYPE_F32') => runInfo({ mode: 'sketch', layers: LAYERS, sketch: { sizes, dtype } });
    expect(modeSummary(sketch([1024, 128, 1024], 'DTYPE_F16'))).toBe(SKETCH);
    expect(modeSummary(sketch([1024, 128, 1024], 'DTYPE_F16'), { brief: true })).toBe('sketch m=1024 fp16');
    expect(modeSummary(sketch([4096, 128, 512]))).toBe('sketch m=512–4096 (1 of 3 layers exact)');
    expect(modeSummary(sketch([8192, 128, 1280], 'DTYPE_BF16'))).toBe('sketch bf16 (every layer exact)');
    expect(modeSummary(sketch([100, 100, 100]))).toBe('sketch m=100');
  });

  it("serve's plain run line says the mode, and the source once a step has shown it", () => {
    const line = formatRun(runInfo({ run: 'r', source: 'none' }));
    expect(line).toContain('mode norms, source none so far, 1/1 ranks connected');
    expect(formatRun(runInfo({ run: 'r', source: 'per-example', mode: 'dense' }))).toContain('mode dense, source per-example,');
  });
});

describe('noisescope serve and replay name a sketch run', () => {
  const start = cliEachTest();
  const dirs: string[] = [];
  afterAll(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

  it('serve prints the mode and then the source on its plain run line, and modeSummary beside mode and sketch with --json', async () => {
    for (const json of [false, true]) {
      const serve = start(['serve', '--port', '0', '--no-log', ...(json ? ['--json'] : [])]);
      await expect.poll(() => serve.lines.length, { timeout: 10_000 }).toBeGreaterThan(0);
      const address = json ? (JSON.parse(serve.lines[0]!) as { address: string }).address : serve.lines[0]!.replace('noisescope listening on ', '');
      const client = connect(address);
      const rank = new RankStream(client);
      rank.send(sketchHello('sketched'));
      for (const m of sketchStep(0)) rank.send(m);
      if (json) {
        const runs = () => serve.lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((e) => e.type === 'run');
        await expect.poll(() => runs().find((e) => e.source === 'accumulation'), { timeout: 10_000 }).toBeTruthy();
        expect(runs()[0]).toMatchObject({ run: 'sketched', mode: 'sketch', modeSummary: SKETCH, sketch: { sizes: SIZES, dtype: 'DTYPE_F16' }, source: 'none' });
      } else {
        const runs = () => serve.lines.filter((l) => l.startsWith('run sketched:'));
        await expect.poll(() => runs().length, { timeout: 10_000 }).toBe(2);
        expect(runs()[0]).toContain(`3 layers, 9,600 parameters, mode ${SKETCH}, source none so far, 1/1 ranks connected`);
        expect(runs()[1]).toContain(`mode ${SKETCH}, source accumulation, 1/1 ranks connected`);
      }
      expect(rank.refusals()).toEqual([]);
      rank.end();
      client.close();
    }
  }, 60_000);

  it('replay prints the logged run with its mode and source, plain and --json', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'noisescope-mode-line-'));
    dirs.push(dir);
    const sidecar = await startSidecar({ port: 0, runLog: { dir } });
    const client = connect(sidecar.address);
    const rank = new RankStream(client);
    const stepped = firstValueFrom(sidecar.stats$.pipe(filter((s) => s.step === 1)));
    rank.send(sketchHello('sketch-log'));
    for (const step of [0, 1]) for (const m of sketchStep(step)) rank.send(m);
    await stepped;
    rank.end();
    client.close();
    await sidecar.close();

    const replay = (...args: string[]) => spawnSync(process.execPath, [CLI, 'replay', join(dir, runLogFileName('sketch-log')), ...args], { encoding: 'utf8' });
    const plain = replay().stdout.split('\n').filter((l) => l.startsWith('run sketch-log:'));
    expect(plain.at(-1)).toContain(`mode ${SKETCH}, source accumulation`);
    const json = replay('--json').stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).filter((e) => e.type === 'run');
    expect(json.at(-1)).toMatchObject({ mode: 'sketch', modeSummary: SKETCH, source: 'accumulation' });
  }, 60_000); // three processes on a shared machine
});
