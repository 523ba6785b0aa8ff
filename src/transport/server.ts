import * as grpc from '@grpc/grpc-js';
import type { Observable } from 'rxjs';
import { NoiseScopeError } from '../errors.js';
import type { Ingest } from '../ingest/ingest.js';
import type { Recommendation } from '../types.js';
import { AttachService } from './attach-service.js';
import type { NoiseScopeHandlers } from './generated/noisescope/v1/NoiseScope.js';
import { loadProto } from './proto.js';
import type { WatchService } from './watch-service.js';

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|localhost|::1|\[::1\])$/;

export function isLoopback(host: string): boolean {
  return LOOPBACK.test(host);
}

export interface BoundServer {
  readonly server: grpc.Server;
  readonly address: string;
  readonly port: number;
  readonly attach: AttachService;
}

/** Binds the NoiseScope service; loopback only until tokens exist. Ranks get `recommendations$` of their run. */
export async function bindServer(
  host: string,
  port: number,
  ingest: Ingest,
  watch: WatchService,
  recommendations$: Observable<Recommendation>,
): Promise<BoundServer> {
  if (!isLoopback(host)) {
    throw new NoiseScopeError(
      'invalid-message',
      `refusing to listen on ${host}: gradients and control would be open to the network without a token. ` +
        'Bind 127.0.0.1 (the default) and reach it over an SSH tunnel until token authentication lands.',
    );
  }
  const server = new grpc.Server();
  const attach = new AttachService(ingest, recommendations$);
  const handlers: NoiseScopeHandlers = { Attach: attach.handler, Watch: watch.handler };
  server.addService(loadProto().noisescope.v1.NoiseScope.service, handlers);
  const target = host.includes(':') && !host.startsWith('[') ? `[${host}]:${port}` : `${host}:${port}`;
  let bound: number;
  try {
    bound = await new Promise<number>((resolve, reject) => {
      server.bindAsync(target, grpc.ServerCredentials.createInsecure(), (error, p) => (error ? reject(error) : resolve(p)));
    });
  } catch (error) {
    attach.close();
    throw error;
  }
  const shownHost = target.slice(0, target.lastIndexOf(':'));
  return { server, port: bound, address: `${shownHost}:${bound}`, attach };
}

/** Graceful shutdown, forced after `graceMs`. */
export function shutdownServer(server: grpc.Server, graceMs = 2000): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    timer.unref();
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}
