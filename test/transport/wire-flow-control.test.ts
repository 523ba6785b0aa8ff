// The sidecar's HTTP/2 receive windows, read from a real client connection. If a grpc-js upgrade
// stops applying them (see src/transport/flow-control.ts), large-shard ingest falls back to 64 KiB
// round trips silently; these tests are where that shows.
import * as http2 from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { startSidecar } from '../../src/index.js';
import { createWindowedServer, DEFAULT_FLOW_CONTROL_WINDOW, HTTP2_DEFAULT_WINDOW } from '../../src/transport/flow-control.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A plain Node HTTP/2 client: what the server advertised (SETTINGS) and what it granted (connection window). */
async function observeWindows(address: string) {
  const session = http2.connect(`http://${address}`);
  session.on('error', () => {}); // the server's GOAWAY at shutdown
  cleanups.push(() => void session.close());
  const settings = await new Promise<http2.Settings>((resolve) => session.once('remoteSettings', resolve));
  return { streamWindow: settings.initialWindowSize, connectionWindow: () => session.state.remoteWindowSize };
}

async function bind(server: grpc.Server): Promise<string> {
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, p) => (error ? reject(error) : resolve(p))),
  );
  cleanups.push(() => server.forceShutdown());
  return `127.0.0.1:${port}`;
}

describe('sidecar HTTP/2 receive windows', () => {
  it('advertises a 16 MiB stream window and grants a 16 MiB connection window to every client', async () => {
    const sidecar = await startSidecar({ port: 0 });
    cleanups.push(() => sidecar.close());
    const windows = await observeWindows(sidecar.address);
    expect(windows.streamWindow).toBe(DEFAULT_FLOW_CONTROL_WINDOW);
    // The connection window moves only through the server's WINDOW_UPDATE, sent right after SETTINGS.
    await expect.poll(windows.connectionWindow).toBe(DEFAULT_FLOW_CONTROL_WINDOW);
  });

  it('keeps both windows at the 64 KiB HTTP/2 default without the hook (the benchmark baseline)', async () => {
    const { server } = createWindowedServer(null);
    const windows = await observeWindows(await bind(server));
    expect(windows.streamWindow).toBe(HTTP2_DEFAULT_WINDOW);
    expect(windows.connectionWindow()).toBe(HTTP2_DEFAULT_WINDOW);
  });

  it('applies a chosen window to every listener of one server', async () => {
    const window = 4 * 1024 * 1024;
    const windowed = createWindowedServer(window);
    const [first, second] = [await bind(windowed.server), await bind(windowed.server)];
    expect(windowed.configuredListeners()).toBe(2);
    for (const address of [first, second]) {
      const windows = await observeWindows(address);
      expect(windows.streamWindow).toBe(window);
      await expect.poll(windows.connectionWindow).toBe(window);
    }
  });

  it('refuses windows HTTP/2 cannot express', () => {
    expect(() => createWindowedServer(1024)).toThrow(RangeError);
    expect(() => createWindowedServer(2 ** 31)).toThrow(RangeError);
  });
});
