import * as grpc from '@grpc/grpc-js';
import { filter, firstValueFrom } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSidecar, watchSidecar, type Sidecar } from '../../src/index.js';
import { bearerMetadata } from '../../src/transport/auth.js';
import { loadProto } from '../../src/transport/proto.js';
import type { NoiseScopeClient } from '../../src/transport/generated/noisescope/v1/NoiseScope.js';
import type { SidecarMessage__Output } from '../../src/transport/generated/noisescope/v1/SidecarMessage.js';
import { clientCredentials, type TlsClientFiles } from '../../src/transport/tls.js';
import { hello } from '../support/rank-client.js';
import { makeTestPki, type TestPki } from './tls-certs.js';

const TOKEN = 'tls-test-token-0123456789abcdef';

function client(address: string, credentials: grpc.ChannelCredentials): NoiseScopeClient {
  const Service = loadProto().noisescope.v1.NoiseScope;
  return new Service(address, credentials);
}

/** Attach with a Hello: the Welcome's run, or the status the call ended with. */
function attachOnce(c: NoiseScopeClient, run: string): Promise<{ welcomed: string } | grpc.StatusObject> {
  return new Promise((resolve) => {
    const call = c.Attach(bearerMetadata(TOKEN), { deadline: Date.now() + 10_000 });
    call.on('data', (m: SidecarMessage__Output) => {
      if (m.welcome) {
        resolve({ welcomed: m.welcome.run });
        call.end();
      }
    });
    call.on('error', () => {});
    call.on('status', resolve);
    call.write(hello({ run }));
  });
}

const pki: TestPki = makeTestPki();

describe('a TLS sidecar', () => {
  let sidecar: Sidecar;
  beforeAll(async () => {
    sidecar = await startSidecar({ port: 0, token: TOKEN, tls: { certFile: pki.serverCert, keyFile: pki.serverKey } });
  });
  afterAll(() => sidecar.close());
  const address = () => `127.0.0.1:${sidecar.port}`;
  const tryWith = async (credentials: grpc.ChannelCredentials, run: string) => {
    const c = client(address(), credentials);
    try {
      return await attachOnce(c, run);
    } finally {
      c.close();
    }
  };

  it('welcomes a client that verifies it against its CA and sends the token', async () => {
    expect(await tryWith(clientCredentials({ caFile: pki.caCert }), 'over-tls')).toEqual({ welcomed: 'over-tls' });
  });

  it('rejects a plain-text client (UNAVAILABLE: no HTTP/2 over the TLS port), accepting nothing', async () => {
    const status = await tryWith(grpc.credentials.createInsecure(), 'plain');
    expect(status).toMatchObject({ code: grpc.status.UNAVAILABLE });
    expect((await firstValueFrom(sidecar.runs$)).map((r) => r.run)).not.toContain('plain');
  });

  it('is rejected by a client trusting another CA (UNAVAILABLE, the handshake fails)', async () => {
    const status = await tryWith(clientCredentials({ caFile: pki.otherCaCert }), 'wrong-ca');
    expect(status).toMatchObject({ code: grpc.status.UNAVAILABLE });
    expect((status as grpc.StatusObject).details).toMatch(/certificate|self.signed|verify/i);
    expect((await firstValueFrom(sidecar.runs$)).map((r) => r.run)).not.toContain('wrong-ca');
  });

  it("tells the TS watch client why the handshake failed (grpc-js's last error), not only that no connection was made", async () => {
    const remote = watchSidecar(address(), { token: TOKEN, tls: { caFile: pki.otherCaCert }, retryMs: 60_000 });
    try {
      const lost = await firstValueFrom(remote.connection$.pipe(filter((c) => c.state === 'lost')));
      expect(lost).toMatchObject({ reason: expect.stringMatching(/^UNAVAILABLE: .*(verify|self.signed).*certificate.* \(retrying\)$/) });
    } finally {
      remote.close();
    }
  });

  it('tells a plain-text watch client (dashboard without --tls-ca) that the sidecar may serve TLS; not where nothing listens', async () => {
    const plain = watchSidecar(address(), { token: TOKEN, retryMs: 60_000 });
    const nowhere = watchSidecar('127.0.0.1:1', { retryMs: 60_000 }); // port 1: nothing listens
    try {
      const lost = await firstValueFrom(plain.connection$.pipe(filter((c) => c.state === 'lost')));
      expect(lost).toMatchObject({ reason: 'UNAVAILABLE: Failed to connect (retrying); if the sidecar serves TLS (serve --tls-cert), give its CA: --tls-ca PEM' });
      const refused = await firstValueFrom(nowhere.connection$.pipe(filter((c) => c.state === 'lost')));
      expect(refused).toMatchObject({ reason: expect.stringMatching(/^UNAVAILABLE: connect ECONNREFUSED .* \(retrying\)$/) });
    } finally {
      plain.close();
      nowhere.close();
    }
  });

  it('checks the certificate for serverName instead of the host dialled (dashboard --tls-server-name)', async () => {
    const named = watchSidecar(address(), { token: TOKEN, tls: { caFile: pki.caCert, serverName: 'localhost' } });
    const other = watchSidecar(address(), { token: TOKEN, tls: { caFile: pki.caCert, serverName: 'elsewhere.internal' }, retryMs: 60_000 });
    try {
      expect((await firstValueFrom(named.connection$.pipe(filter((c) => c.state !== 'connecting')))).state).toBe('connected');
      const lost = await firstValueFrom(other.connection$.pipe(filter((c) => c.state === 'lost')));
      expect(lost).toMatchObject({ reason: expect.stringMatching(/^UNAVAILABLE: .*elsewhere\.internal.*certificate|^UNAVAILABLE: .*certificate.*elsewhere\.internal/) });
    } finally {
      named.close();
      other.close();
    }
  });

  it("feeds the TS watch client over TLS with the token (runs$ and connection$)", async () => {
    const remote = watchSidecar(address(), { token: TOKEN, tls: { caFile: pki.caCert } });
    try {
      const runs = await firstValueFrom(remote.runs$.pipe(filter((list) => list.some((r) => r.run === 'over-tls'))));
      expect(runs.map((r) => r.run)).toContain('over-tls');
      expect((await firstValueFrom(remote.connection$)).state).toBe('connected');
    } finally {
      remote.close();
    }
  });
});

describe('a sidecar requiring client certificates', () => {
  let sidecar: Sidecar;
  beforeAll(async () => {
    sidecar = await startSidecar({
      port: 0,
      token: TOKEN,
      tls: { certFile: pki.serverCert, keyFile: pki.serverKey, clientCaFile: pki.caCert },
    });
  });
  afterAll(() => sidecar.close());
  const tryWith = async (files: TlsClientFiles, run: string) => {
    const c = client(`127.0.0.1:${sidecar.port}`, clientCredentials(files));
    try {
      return await attachOnce(c, run);
    } finally {
      c.close();
    }
  };

  it('welcomes a client whose certificate its CA signed', async () => {
    const files = { caFile: pki.caCert, certFile: pki.clientCert, keyFile: pki.clientKey };
    expect(await tryWith(files, 'mtls')).toEqual({ welcomed: 'mtls' });
  });

  it.each([
    ['no client certificate', { caFile: pki.caCert }],
    ['a client certificate another CA signed', { caFile: pki.caCert, certFile: pki.otherClientCert, keyFile: pki.otherClientKey }],
  ])('rejects %s, accepting nothing', async (_what, files: TlsClientFiles) => {
    const status = await tryWith(files, 'no-cert');
    expect(status).toMatchObject({ code: grpc.status.UNAVAILABLE });
    expect((await firstValueFrom(sidecar.runs$)).map((r) => r.run)).not.toContain('no-cert');
  });

  it('tells a TS watch client without a client certificate that one is required', async () => {
    const remote = watchSidecar(`127.0.0.1:${sidecar.port}`, { token: TOKEN, tls: { caFile: pki.caCert }, retryMs: 60_000 });
    try {
      const lost = await firstValueFrom(remote.connection$.pipe(filter((c) => c.state === 'lost')));
      expect(lost).toMatchObject({ reason: expect.stringMatching(/^UNAVAILABLE: .*certificate required \(retrying\)$/) });
    } finally {
      remote.close();
    }
  });
});

describe('TLS files', () => {
  it('refuses a key that is not the certificate’s, naming both files', async () => {
    await expect(startSidecar({ port: 0, tls: { certFile: pki.serverCert, keyFile: pki.clientKey } })).rejects.toThrow(
      `the sidecar TLS key ${pki.clientKey} is not the key of the certificate ${pki.serverCert}`,
    );
  });

  it('refuses a missing or non-PEM file, naming it', async () => {
    await expect(startSidecar({ port: 0, tls: { certFile: `${pki.dir}/absent.pem`, keyFile: pki.serverKey } })).rejects.toThrow(
      `the sidecar TLS certificate ${pki.dir}/absent.pem: cannot read it (ENOENT)`,
    );
    expect(() => clientCredentials({ caFile: `${pki.dir}/server.ext` })).toThrow(`the TLS CA ${pki.dir}/server.ext: not a PEM file`);
    expect(() => clientCredentials({ certFile: pki.clientCert })).toThrow('give both or neither');
  });
});
