// The message-size limit is grpc-js's own; its status is made to name the limit and how to raise it
// (src/transport/limits.ts rewrites the grpc-message of that status). A grpc-js upgrade that bypasses
// the rewrite fails here.
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSidecar, type Sidecar } from '../../src/index.js';
import { ATTACH_PATH, connectRaw, grpcFrame, rawCall } from '../../src/bench/raw-grpc.js';
import { connect, hello, LAYERS, RankStream } from '../support/rank-client.js';
import type { NoiseScopeClient } from '../../src/transport/generated/noisescope/v1/NoiseScope.js';

const LIMIT = 64 * 1024;
const HINT = `(limit message size = ${LIMIT}: raise it with \`serve --max-message-mb\` or startSidecar({ limits: { maxMessageBytes } }))`;

let sidecar: Sidecar;
let client: NoiseScopeClient;
beforeAll(async () => {
  sidecar = await startSidecar({ port: 0, limits: { maxMessageBytes: LIMIT } });
  client = connect(sidecar.address);
});
afterAll(async () => {
  client.close();
  await sidecar.close();
});

const until = (ready: () => boolean) => expect.poll(ready, { timeout: 10_000, interval: 20 }).toBe(true);
const manyLayers = (n: number) => Array.from({ length: n }, (_, i) => ({ name: `block.${i}.weight`, numel: 1, kind: 'Linear' }));

describe('message size limit', () => {
  it('refuses an oversize first message with RESOURCE_EXHAUSTED naming the limit, its value and how to raise it', async () => {
    const rank = new RankStream(client);
    rank.send(hello({ layers: manyLayers(4000) })); // ~100 KiB
    await until(() => rank.status !== null);
    expect(rank.status?.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(rank.status?.details).toMatch(/^Received message larger than max \(\d+ vs 65536\) /);
    expect(rank.status?.details.endsWith(HINT)).toBe(true);
  });

  it('says the same for an oversize message after the Welcome, and for a huge declared length', async () => {
    const rank = new RankStream(client);
    rank.send(hello({ run: 'big-later' }));
    await until(() => rank.received.length > 0);
    rank.send({ shard: { step: 0, microBatch: 0, examples: 1, sqNorms: { values: Array.from({ length: 10_000 }, () => 1) } } });
    await until(() => rank.status !== null);
    expect(rank.received[0]?.welcome?.run).toBe('big-later');
    expect(rank.status?.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(rank.status?.details.endsWith(HINT)).toBe(true);

    const session = await connectRaw(sidecar.address);
    try {
      const out = await rawCall(session, ATTACH_PATH, grpcFrame(Buffer.alloc(8), { declared: 2 ** 32 - 1 }));
      expect(out.status).toBe(status.RESOURCE_EXHAUSTED);
      expect(out.message).toBe(`Received message larger than max (4294967295 vs ${LIMIT}) ${HINT}`);
    } finally {
      session.close();
    }
  });

  it('still welcomes a rank whose messages fit', async () => {
    const rank = new RankStream(client);
    rank.send(hello({ run: 'fits', layers: LAYERS }));
    await until(() => rank.received.length > 0);
    expect(rank.received[0]?.welcome?.run).toBe('fits');
    rank.end();
  });
});
