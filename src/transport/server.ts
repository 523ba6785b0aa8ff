import * as grpc from '@grpc/grpc-js';
import type { Observable } from 'rxjs';
import type { Ingest } from '../ingest/ingest.js';
import type { Recommendation } from '../types.js';
import { AttachService } from './attach-service.js';
import { authInterceptor, Authenticator, requireTokenOffLoopback } from './auth.js';
import { createWindowedServer, DEFAULT_FLOW_CONTROL_WINDOW } from './flow-control.js';
import { DEFAULT_LIMITS, messageSizeOptions, nameMessageSizeLimit, type SidecarLimits } from './limits.js';
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
  /** The HTTP/2 receive window (stream and connection) applied to this listener; null: Node's 64 KiB defaults. */
  readonly flowControlWindow: number | null;
}

/** Who may call (tokens) and over what (plain text or TLS); the default: anyone on loopback, plain text. */
export interface ServerSecurity {
  readonly auth: Authenticator;
  readonly credentials: grpc.ServerCredentials;
}

/**
 * Binds the NoiseScope service; any host but loopback needs a token, then checked on every call. Ranks get `recommendations$` of their run.
 * The receive window is enlarged (see flow-control.ts) so 1–4 MiB dense shards are not throttled to 64 KiB round trips.
 */
export async function bindServer(
  host: string,
  port: number,
  ingest: Ingest,
  watch: WatchService,
  recommendations$: Observable<Recommendation>,
  window: number | null = DEFAULT_FLOW_CONTROL_WINDOW,
  security: ServerSecurity = { auth: new Authenticator({}), credentials: grpc.ServerCredentials.createInsecure() },
  limits: SidecarLimits = DEFAULT_LIMITS,
): Promise<BoundServer> {
  requireTokenOffLoopback(host, isLoopback(host), security.auth);
  const windowed = createWindowedServer(window, {
    ...messageSizeOptions(limits),
    ...(security.auth.required ? { interceptors: [authInterceptor(security.auth)] } : {}),
  });
  const server = windowed.server;
  nameMessageSizeLimit(server, limits);
  const attach = new AttachService(ingest, recommendations$);
  const handlers: NoiseScopeHandlers = { Attach: attach.handler, Watch: watch.handler };
  server.addService(loadProto().noisescope.v1.NoiseScope.service, handlers);
  const target = host.includes(':') && !host.startsWith('[') ? `[${host}]:${port}` : `${host}:${port}`;
  let bound: number;
  try {
    bound = await new Promise<number>((resolve, reject) => {
      server.bindAsync(target, security.credentials, (error, p) => (error ? reject(error) : resolve(p)));
    });
  } catch (error) {
    attach.close();
    throw error;
  }
  const shownHost = target.slice(0, target.lastIndexOf(':'));
  // Zero configured listeners means a grpc-js upgrade bypassed the hook: say so rather than claim the window.
  const flowControlWindow = windowed.configuredListeners() > 0 ? window : null;
  return { server, port: bound, address: `${shownHost}:${bound}`, attach, flowControlWindow };
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
