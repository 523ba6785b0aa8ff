import { status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { limitsFromFlags } from '../../src/cli/limit-flags.js';
import { cliEachTest } from '../support/cli-process.js';
import { connect, hello, RankStream } from '../support/rank-client.js';

const start = cliEachTest();

describe('serve limit flags', () => {
  it('turn into limits, and a bad value names its flag', () => {
    expect(limitsFromFlags({})).toEqual({});
    expect(limitsFromFlags({ 'max-message-mb': '64', 'max-runs': '8', 'max-layers': '500000' })).toEqual({
      maxMessageBytes: 64 * 2 ** 20,
      runs: 8,
      layersPerRun: 500_000,
    });
    expect(() => limitsFromFlags({ 'max-message-mb': '4096' })).toThrow("--max-message-mb must be a whole number in 1..2047, got '4096'");
    expect(() => limitsFromFlags({ 'max-runs': '0' })).toThrow("--max-runs must be a whole number in 1..1000000, got '0'");
  });

  it('serve --max-layers 2 refuses a 3-layer Hello with the flag in the status; a bad flag exits 2 naming it', async () => {
    const bad = start(['serve', '--port', '0', '--json', '--no-log', '--no-dashboard', '--max-layers', 'many']);
    expect(await bad.exit).toBe(2);
    expect(bad.stderr()).toContain("--max-layers must be a whole number in 1..100000000, got 'many'");

    const serve = start(['serve', '--port', '0', '--json', '--no-log', '--no-dashboard', '--max-layers', '2']);
    const listening = () => serve.lines.map((l) => JSON.parse(l) as { type: string; address: string }).find((m) => m.type === 'listening');
    await expect.poll(listening, { timeout: 20_000 }).toBeDefined();
    const { address } = listening()!;
    const client = connect(address);
    try {
      const rank = new RankStream(client);
      rank.send(hello());
      await expect.poll(() => rank.status, { timeout: 10_000 }).not.toBeNull();
      expect(rank.status?.code).toBe(status.RESOURCE_EXHAUSTED);
      expect(rank.status?.details).toContain('(limit layers per run = 2: raise it with `serve --max-layers`');
    } finally {
      client.close();
    }
  }, 40_000);
});
