// A loopback TCP forwarder whose connections a test can cut, to lose a gRPC
// connection while the sidecar behind it keeps running.
import { createConnection, createServer, type Socket } from 'node:net';

export interface TcpProxy {
  readonly address: string;
  /** Destroys every open connection (new ones are still forwarded). */
  cut(): void;
  close(): Promise<void>;
}

export async function startTcpProxy(target: string): Promise<TcpProxy> {
  const split = target.lastIndexOf(':');
  const host = target.slice(0, split);
  const port = Number(target.slice(split + 1));
  const sockets = new Set<Socket>();
  const track = (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => s.destroy());
  };
  const server = createServer((inbound) => {
    const outbound = createConnection({ host, port });
    track(inbound);
    track(outbound);
    inbound.pipe(outbound).pipe(inbound);
    inbound.on('close', () => outbound.destroy());
    outbound.on('close', () => inbound.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port: own } = server.address() as { port: number };
  return {
    address: `127.0.0.1:${own}`,
    cut: () => {
      for (const s of sockets) s.destroy();
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
