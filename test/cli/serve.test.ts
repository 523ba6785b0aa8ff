import { describe, expect, it } from 'vitest';
import { recommendationFromWire } from '../../src/remote/from-wire.js';
import { cliEachTest } from '../support/cli-process.js';
import { accumulationStep, connect, hello, RankStream } from '../support/rank-client.js';
import { SyntheticRun } from '../support/synthetic-run.js';

const start = cliEachTest();

describe('noisescope serve', () => {
  it('prints NDJSON with --json: listening, the run, one step line per measured step', async () => {
    const serve = start(['serve', '--port', '0', '--json']);
    await expect.poll(() => serve.lines.length, { timeout: 10_000 }).toBeGreaterThan(0);
    const listening = JSON.parse(serve.lines[0]!);
    expect(listening).toMatchObject({ type: 'listening', address: expect.stringMatching(/^127\.0\.0\.1:\d+$/) });

    const client = connect(listening.address);
    const rank = new RankStream(client);
    rank.send(hello({ run: 'cli-run' }));
    for (const step of [0, 1]) {
      for (const m of accumulationStep(step, [[4, 1, 2], [5, 1, 2]], [16, 3.5, 7])) rank.send(m);
    }
    const events = () => serve.lines.map((l) => JSON.parse(l) as { type: string; [k: string]: unknown });
    await expect.poll(() => events().filter((e) => e.type === 'step').length, { timeout: 10_000 }).toBe(2);
    const steps = events().filter((e) => e.type === 'step');
    expect(steps[1]).toMatchObject({ run: 'cli-run', step: 1, source: 'accumulation', globalBatch: 32, levels: 2 });
    expect(events().some((e) => e.type === 'run' && e.run === 'cli-run')).toBe(true);
    rank.end();
    client.close();
    serve.child.kill('SIGTERM');
    expect(await serve.exit).toBe(0);
  });

  it('prints one readable line per step without --json', async () => {
    const serve = start(['serve', '--port', '0']);
    await expect.poll(() => serve.lines.length, { timeout: 10_000 }).toBeGreaterThan(0);
    const address = serve.lines[0]!.replace('noisescope listening on ', '');
    const client = connect(address);
    const rank = new RankStream(client);
    rank.send(hello({ run: 'plain-run' }));
    for (const m of accumulationStep(0, [[4, 1, 2], [5, 1, 2]], [16, 3.5, 7])) rank.send(m);
    await expect.poll(() => serve.lines.find((l) => l.startsWith('plain-run step 0')), { timeout: 10_000 }).toBeTruthy();
    expect(serve.lines.find((l) => l.startsWith('plain-run step 0'))).toMatch(/B 32 \(2 micro\)\s+B_simple \S+/);
    expect(serve.lines.find((l) => l.startsWith('run plain-run'))).toMatch(/3 layers, 9,600 parameters/);
    rank.end();
    client.close();
  });

  it.each([
    [['serve', '--port', 'abc'], /--port must be a number, got 'abc'/],
    [['serve', '--port', '70000'], /--port must be 0..65535/],
    [['serve', '--beta', '1.5'], /--beta must be in \[0, 1\), got '1.5'/],
    [['serve', '--confidence', '1'], /--confidence must be in \(0, 1\), got '1'/],
    [['serve', '--temperature-tolerance', '0'], /--temperature-tolerance must be a number > 0 \(or Infinity\), got '0'/],
    [['serve', '--temperature-tolerance', 'wide'], /--temperature-tolerance must be a number > 0 \(or Infinity\), got 'wide'/],
    [['serve', '--objective', 'fast'], /--objective must be one of balanced, time, compute, got 'fast'/],
    [['serve', '--min-batch', '0'], /--min-batch must be a whole number ≥ 1, got '0'/],
    [['serve', '--max-batch', '12.5'], /--max-batch must be a whole number ≥ 1, got '12.5'/],
    [['serve', '--max-micro-batch=-4'], /--max-micro-batch must be a whole number ≥ 1, got '-4'/],
    [['serve', '--max-factor', '1'], /--max-factor must be a number above 1, got '1'/],
    [['serve', '--max-factor', 'x2'], /--max-factor must be a number above 1, got 'x2'/],
    [['serve', '--window', ''], /--window must be a whole number ≥ 1, got ''/],
    [['serve', '--min-batch', '256', '--max-batch', '64'], /--max-batch 64 is below --min-batch 256: no batch satisfies both/],
    [['serve', '--monotone=yes'], /--monotone/],
    [['demo', '--host', '0.0.0.0'], /Unknown option '--host'/],
    [['demo', '--window', '0'], /--window must be a whole number ≥ 1, got '0'/],
    [['serve', '--bogus'], /Unknown option '--bogus'/],
    [['frobnicate'], /unknown command 'frobnicate'/],
  ])('rejects %j with a clear message and exit code 2, before listening', async (args, message) => {
    const run = start(args.includes('--port') ? args : [...args, '--port', '0']);
    expect(await run.exit).toBe(2);
    expect(run.stderr()).toMatch(message);
    // The message and a pointer to --help: a terminal still shows the message.
    expect(run.stderr().trimEnd().split('\n')).toEqual([expect.stringMatching(message), '(--help lists every command and flag)']);
    expect(run.lines).toEqual([]);
  });

  it('prints each recommendation as NDJSON with --json, as the run’s ranks receive it', async () => {
    const serve = start(['serve', '--port', '0', '--json', '--window', '3', '--max-factor', '4', '--objective', 'time']);
    await expect.poll(() => serve.lines.length, { timeout: 10_000 }).toBeGreaterThan(0);
    const { address } = JSON.parse(serve.lines[0]!) as { address: string };
    const client = connect(address);
    const rank = new RankStream(client);
    // B_simple 100 at batch 64: the time objective aims at 400, capped at 4× per change.
    const run = new SyntheticRun({ run: 'cli-adv', bSimple: 100, microExamples: [[16, 16, 16, 16]], seed: 5 });
    rank.send(run.hello(0));
    for (let step = 0; step < 40; step++) for (const m of run.messages(step, 0)) rank.send(m);
    const events = () => serve.lines.map((l) => JSON.parse(l) as { type: string; [k: string]: unknown });
    await expect.poll(() => events().filter((e) => e.type === 'step').length, { timeout: 10_000 }).toBe(40);
    const printed = events().filter((e) => e.type === 'recommendation');
    expect(printed.length).toBeGreaterThan(0);
    expect(printed[0]).toMatchObject({ run: 'cli-adv', sequence: 1, action: 'increase', objective: 'time', currentGlobalBatch: 64, recommendedGlobalBatch: 256, accumulationSteps: 16 });
    await expect.poll(() => rank.recommendations().length).toBe(printed.length);
    expect(printed).toEqual(rank.recommendations().map((w) => ({ type: 'recommendation', ...recommendationFromWire(w) })));
    rank.end();
    client.close();
  });

  it('prints one readable line per recommendation without --json', async () => {
    const serve = start(['serve', '--port', '0', '--window', '3']);
    await expect.poll(() => serve.lines.length, { timeout: 10_000 }).toBeGreaterThan(0);
    const client = connect(serve.lines[0]!.replace('noisescope listening on ', ''));
    const rank = new RankStream(client);
    const run = new SyntheticRun({ run: 'cli-down', bSimple: 4, microExamples: [[16, 16, 16, 16]], seed: 6 });
    rank.send(run.hello(0));
    for (let step = 0; step < 40; step++) for (const m of run.messages(step, 0)) rank.send(m);
    await expect.poll(() => serve.lines.filter((l) => l.startsWith('cli-down step 39')).length, { timeout: 10_000 }).toBe(1);
    await expect.poll(() => rank.recommendations().length).toBeGreaterThan(0);
    const lines = serve.lines.filter((l) => / recommendation #\d+:/.test(l));
    expect(lines.length).toBe(rank.recommendations().length);
    const first = rank.recommendations()[0]!;
    expect(lines[0]).toMatch(
      new RegExp(`^cli-down step ${first.step}  recommendation #1: decrease batch 64 → 32 \\(16 per micro-batch × 2 accumulation\\), confidence [\\d.]+, lr 0.1 → 0.05 \\(linear rule, a heuristic\\)\\. \\S.+$`),
    );
    rank.end();
    client.close();
  });

  it('refuses to listen beyond loopback without a token', async () => {
    const run = start(['serve', '--host', '0.0.0.0', '--port', '0']);
    expect(await run.exit).toBe(1);
    expect(run.stderr()).toMatch(/refusing to listen on 0.0.0.0/);
  });
});

describe('noisescope demo --adaptive', () => {
  it('passes --adaptive to the Python demo, whose training then runs at the recommended batch', async () => {
    const demo = start(['demo', '--adaptive', '--json', '--', '--steps', '120', '--step-time', '0']);
    expect(await demo.exit).toBe(0);
    const events = demo.lines.map((l) => JSON.parse(l) as { type: string; step: number; [k: string]: unknown });
    const advice = events.filter((e) => e.type === 'recommendation' && e.action === 'increase');
    expect(advice.length).toBeGreaterThan(0);
    const first = advice[0]!;
    // The hook applies a change at a later step boundary: some later step has the recommended batch.
    const later = events.filter((e) => e.type === 'step' && e.step > first.step).map((e) => e.globalBatch);
    expect(later).toContain(first.recommendedGlobalBatch);
    expect(first.recommendedGlobalBatch).not.toBe(first.currentGlobalBatch);
  }, 120_000);
});
