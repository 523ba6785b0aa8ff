import * as grpc from '@grpc/grpc-js';
import { filter, firstValueFrom, take, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSidecar, watchSidecar, type Sidecar } from '../../src/index.js';
import { bearerMetadata } from '../../src/transport/auth.js';
import type { NoiseScopeClient } from '../../src/transport/generated/noisescope/v1/NoiseScope.js';
import type { RankMessage } from '../../src/transport/generated/noisescope/v1/RankMessage.js';
import type { RunEvent__Output } from '../../src/transport/generated/noisescope/v1/RunEvent.js';
import type { SidecarMessage__Output } from '../../src/transport/generated/noisescope/v1/SidecarMessage.js';
import { accumulationStep, connect, hello } from '../support/rank-client.js';

const TOKEN = 'sidecar-token-0123456789abcdef';
const RUN_A_TOKEN = 'run-a-token-fedcba9876543210';
const MICRO = [
  [4, 1, 2],
  [5, 1.2, 2.5],
];
const ACCUMULATED = [16, 4, 8];

/** One Attach call with `metadata`: what it received and how it ended. */
function attach(client: NoiseScopeClient, metadata: grpc.Metadata, messages: RankMessage[]) {
  const received: SidecarMessage__Output[] = [];
  const call = client.Attach(metadata);
  call.on('data', (m: SidecarMessage__Output) => received.push(m));
  call.on('error', () => {}); // 'status' carries it
  const ended = new Promise<grpc.StatusObject>((resolve) => call.on('status', resolve));
  for (const m of messages) call.write(m);
  return { received, ended, call };
}

/** One Watch call: its first event, or how it ended. */
function watchOnce(client: NoiseScopeClient, metadata: grpc.Metadata, run = ''): Promise<RunEvent__Output | grpc.StatusObject> {
  return new Promise((resolve) => {
    const call = client.Watch({ run }, metadata);
    call.on('data', (e: RunEvent__Output) => {
      resolve(e);
      call.cancel();
    });
    call.on('error', () => {});
    call.on('status', resolve);
  });
}

function metadataWith(header: string): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', header);
  return metadata;
}

describe('a sidecar with a token', () => {
  let sidecar: Sidecar;
  let client: NoiseScopeClient;
  beforeAll(async () => {
    sidecar = await startSidecar({ port: 0, healthIntervalMs: 50, token: TOKEN, runTokens: { 'run-a': RUN_A_TOKEN } });
    client = connect(sidecar.address);
  });
  afterAll(async () => {
    client.close();
    await sidecar.close();
  });
  const runs = () => firstValueFrom(sidecar.runs$).then((list) => list.map((r) => r.run));

  it.each([
    ['no authorization header', new grpc.Metadata()],
    ['a wrong token', bearerMetadata('not-the-token-0123456789')],
    ['the token one character short', bearerMetadata(TOKEN.slice(0, -1))],
    ['the token with another scheme', metadataWith(`Basic ${TOKEN}`)],
    ['an empty bearer', metadataWith('Bearer ')],
  ])('ends Attach and Watch with UNAUTHENTICATED for %s, accepting nothing', async (_what, metadata) => {
    const rank = attach(client, metadata, [hello({ run: 'intruder' }), ...accumulationStep(0, MICRO, ACCUMULATED)]);
    const status = await rank.ended;
    expect(status.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(status.details).toMatch(/missing or wrong bearer token.*NOISESCOPE_TOKEN/);
    expect(rank.received).toEqual([]); // no Welcome
    const watched = await watchOnce(client, metadata);
    expect(watched).toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    expect(await runs()).not.toContain('intruder');
  });

  it('never echoes the presented token in its refusal', async () => {
    const wrong = 'a-wrong-token-that-must-not-echo';
    const status = await attach(client, bearerMetadata(wrong), [hello()]).ended;
    expect(`${status.details} ${JSON.stringify(status.metadata.getMap())}`).not.toContain(wrong);
  });

  it('accepts the token: the rank is welcomed, its step estimated, and Watch streams', async () => {
    const got = firstValueFrom(sidecar.stats$.pipe(filter((s) => s.run === 'authorized'), take(1), toArray()));
    const rank = attach(client, bearerMetadata(TOKEN), [hello({ run: 'authorized' }), ...accumulationStep(0, MICRO, ACCUMULATED)]);
    const [stats] = await got;
    expect(stats).toMatchObject({ run: 'authorized', step: 0, microBatches: 2 });
    expect(rank.received[0]?.welcome).toMatchObject({ run: 'authorized' });
    rank.call.end();
    expect((await rank.ended).code).toBe(grpc.status.OK);
    const watched = await watchOnce(client, bearerMetadata(TOKEN));
    expect('kind' in watched && watched.kind).toBeTruthy();
  });

  it('tells a watch client without the token why, on connection$, and streams to one with it', async () => {
    const without = watchSidecar(sidecar.address, { retryMs: 10_000 });
    const with_ = watchSidecar(sidecar.address, { token: TOKEN });
    try {
      const lost = await firstValueFrom(without.connection$.pipe(filter((c) => c.state === 'lost')));
      expect(lost).toMatchObject({ reason: expect.stringMatching(/^UNAUTHENTICATED: missing or wrong bearer token/) });
      expect((await firstValueFrom(with_.health$)).unixMs).toBeGreaterThan(0);
    } finally {
      without.close();
      with_.close();
    }
  });

  it("opens a run token's run only: other runs and the all-runs Watch get PERMISSION_DENIED", async () => {
    const mine = attach(client, bearerMetadata(RUN_A_TOKEN), [hello({ run: 'run-a' })]);
    await expect.poll(() => mine.received[0]?.welcome?.run).toBe('run-a');
    const other = attach(client, bearerMetadata(RUN_A_TOKEN), [hello({ run: 'run-b' })]);
    const status = await other.ended;
    expect(status.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(status.details).toBe("this token opens only run 'run-a', not run 'run-b'");
    expect(await runs()).not.toContain('run-b');
    expect(await watchOnce(client, bearerMetadata(RUN_A_TOKEN))).toMatchObject({
      code: grpc.status.PERMISSION_DENIED,
      details: "this token opens only run 'run-a', not every run: watch it by name (noisescope dashboard --run run-a)",
    });
    expect(await watchOnce(client, bearerMetadata(RUN_A_TOKEN), 'run-b')).toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    const runA = await watchOnce(client, bearerMetadata(RUN_A_TOKEN), 'run-a');
    expect('runStarted' in runA && runA.runStarted?.run).toBe('run-a');
    mine.call.end();
    await mine.ended;
  });
});

describe('binding', () => {
  it('refuses a non-loopback host without a token, saying how to set one', async () => {
    const refused = startSidecar({ host: '0.0.0.0', port: 0 });
    await expect(refused).rejects.toThrow(/refusing to listen on 0\.0\.0\.0 without a token/);
    await expect(refused).rejects.toThrow(/--token-file PATH.*--token TOKEN.*NOISESCOPE_TOKEN/);
  });

  it('binds a non-loopback host with a token', async () => {
    const sidecar = await startSidecar({ host: '0.0.0.0', port: 0, token: TOKEN });
    expect(sidecar.address).toMatch(/^0\.0\.0\.0:\d+$/);
    await sidecar.close();
  });

  it('refuses a short token before binding, naming it but not showing it', async () => {
    await expect(startSidecar({ port: 0, token: 'short-secret' })).rejects.toThrow(
      /^the sidecar token: a token needs at least 16 characters, got 12/,
    );
    await expect(startSidecar({ port: 0, runTokens: { r: 'has a space in it!!' } })).rejects.toThrow(
      "the token of run 'r': a token must be printable ASCII without spaces or newlines",
    );
  });
});
