import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { bearerMetadata } from '../../src/transport/auth.js';
import { clientSecurityFromFlags, serveSecurityFromFlags, tokenFromFlags } from '../../src/transport/security-flags.js';
import { cliEachTest } from '../support/cli-process.js';
import { connect } from '../support/rank-client.js';

const start = cliEachTest();
const TOKEN = 'cli-token-0123456789abcdef';
const dir = mkdtempSync(join(tmpdir(), 'noisescope-auth-cli-'));
const tokenFile = join(dir, 'token');
writeFileSync(tokenFile, `${TOKEN}\n`);

function watchStatus(address: string, metadata: grpc.Metadata): Promise<grpc.StatusObject | 'streaming'> {
  const client = connect(address);
  return new Promise<grpc.StatusObject | 'streaming'>((resolve) => {
    const call = client.Watch({}, metadata);
    call.on('data', () => {
      resolve('streaming');
      call.cancel();
    });
    call.on('error', () => {});
    call.on('status', resolve);
  }).finally(() => client.close());
}

describe('serve with a token', () => {
  it('refuses a non-loopback --host without a token (exit 1), saying how to set one', async () => {
    const serve = start(['serve', '--host', '0.0.0.0', '--port', '0', '--json', '--no-log']);
    expect(await serve.exit).toBe(1);
    expect(serve.stderr()).toMatch(/refusing to listen on 0\.0\.0\.0 without a token.*--token-file PATH.*NOISESCOPE_TOKEN/);
    expect(serve.lines).toEqual([]);
  });

  it('listens on a non-loopback host with --token-file, warns that it is plain text, and checks every call', async () => {
    const serve = start(['serve', '--host', '0.0.0.0', '--port', '0', '--json', '--no-log', '--token-file', tokenFile]);
    await expect.poll(() => serve.lines.length, { timeout: 10_000 }).toBeGreaterThan(0);
    const { address } = JSON.parse(serve.lines[0]!) as { address: string };
    const local = address.replace('0.0.0.0', '127.0.0.1');
    expect(await watchStatus(local, new grpc.Metadata())).toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    expect(await watchStatus(local, bearerMetadata(TOKEN))).toBe('streaming');
    await expect.poll(() => serve.stderr()).toContain('tokens and gradients cross the network in plain text: add --tls-cert and --tls-key');
    expect(serve.stderr() + serve.lines.join('\n')).not.toContain(TOKEN);
  });

  it.each([
    [['--token', 'short-secret'], "--token: a token needs at least 16 characters, got 12"],
    [['--token-file', join(dir, 'absent')], `--token-file ${join(dir, 'absent')}: cannot read it (ENOENT)`],
    [['--token', TOKEN, '--token-file', tokenFile], '--token and --token-file both given: give one'],
    [['--run-token', 'run-only'], "--run-token must be RUN=FILE (a file holding that run's token), got 'run-only'"],
    [['--tls-cert', tokenFile], '--tls-cert and --tls-key go together: give both'],
    [['--tls-client-ca', tokenFile], '--tls-client-ca needs TLS: give --tls-cert and --tls-key too'],
  ])('refuses %j with exit 2 naming the flag, before listening', async (flags, message) => {
    const serve = start(['serve', '--port', '0', '--no-log', ...flags]);
    expect(await serve.exit).toBe(2);
    expect(serve.stderr()).toContain(message);
    expect(serve.stderr()).not.toContain('short-secret');
    expect(serve.lines).toEqual([]);
  });
});

describe('token precedence', () => {
  it('takes --token, else --token-file, else $NOISESCOPE_TOKEN, else none', () => {
    const env = { NOISESCOPE_TOKEN: 'from-the-environment-0123' };
    expect(tokenFromFlags({ token: 'from-the-flag-0123456789' }, env)).toBe('from-the-flag-0123456789');
    expect(tokenFromFlags({ 'token-file': tokenFile }, env)).toBe(TOKEN);
    expect(tokenFromFlags({}, env)).toBe('from-the-environment-0123');
    expect(tokenFromFlags({}, {})).toBeUndefined();
    expect(() => tokenFromFlags({}, { NOISESCOPE_TOKEN: 'tiny' })).toThrow('$NOISESCOPE_TOKEN: a token needs at least 16 characters, got 4');
  });

  it('reads --run-token files per run', () => {
    expect(serveSecurityFromFlags({ 'run-token': [`alpha=${tokenFile}`] }, {})).toEqual({ runTokens: { alpha: TOKEN } });
  });

  it("dashboard: --tls-server-name, else $NOISESCOPE_TLS_SERVER_NAME, only with TLS", () => {
    const env = { NOISESCOPE_TLS_CA: 'ca.pem', NOISESCOPE_TLS_SERVER_NAME: 'from-env.internal' };
    expect(clientSecurityFromFlags({ 'tls-server-name': 'sidecar.internal' }, env)).toEqual({ tls: { caFile: 'ca.pem', serverName: 'sidecar.internal' } });
    expect(clientSecurityFromFlags({}, env)).toEqual({ tls: { caFile: 'ca.pem', serverName: 'from-env.internal' } });
    expect(() => clientSecurityFromFlags({ 'tls-server-name': 'sidecar.internal' }, {})).toThrow('--tls-server-name is the name checked against');
  });
});
