// HTTP/2 receive windows for the grpc-js server.
//
// Why: with Node's default 64 KiB windows a client must wait for a WINDOW_UPDATE every 64 KiB,
// which caps loopback ingest of 1–4 MiB shards at ≈ 300 MB/s; a 16 MiB window carries ≈ 1.2 GB/s
// (DESIGN.md, Measured facts). Both windows matter: the per-stream one (SETTINGS_INITIAL_WINDOW_SIZE,
// advertised in the server's SETTINGS frame) and the connection one (raised only by a WINDOW_UPDATE).
//
// How, against @grpc/grpc-js 1.14.x (checked on 1.14.7): the server reads no option for its own
// windows. `grpc-node.flow_control_window` is honoured by the client transport only (grpc-node
// #2864); the server side is grpc-node PR #3058, open at the time of writing. So we pass that option
// (a grpc-js that honours it applies the window itself) and also configure every listener's Node
// Http2Server as grpc-js creates it (http2-listeners.ts) with public Node APIs:
// `Http2Server.updateSettings({ initialWindowSize })` and, per session,
// `Http2Session.setLocalWindowSize()`. test/transport/wire-flow-control.test.ts reads both windows
// from a real client connection, so an upgrade that stops either path fails there.
import type * as http2 from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { onEachHttp2Server } from './http2-listeners.js';

/** 16 MiB: the window DESIGN measured at ≈ 1.2 GB/s; it also bounds what one connection may buffer unread. */
export const DEFAULT_FLOW_CONTROL_WINDOW = 16 * 1024 * 1024;

/** HTTP/2's initial window (RFC 9113 §6.9.2), what a peer gets without our settings. */
export const HTTP2_DEFAULT_WINDOW = 65_535;

/** The largest window HTTP/2 allows. */
const HTTP2_MAX_WINDOW = 2 ** 31 - 1;

export interface WindowedServer {
  readonly server: grpc.Server;
  /** The window asked for; null when the server keeps Node's defaults. */
  readonly window: number | null;
  /** Node Http2Servers our hook configured so far; 0 after a bind means the hook no longer runs. */
  configuredListeners(): number;
}

/**
 * A grpc-js Server whose listeners advertise `window` bytes for each stream and for the connection.
 * `window: null` leaves grpc-js and Node at their defaults (the benchmark's baseline).
 */
export function createWindowedServer(window: number | null, options: grpc.ServerOptions = {}): WindowedServer {
  if (window === null) {
    const server = new grpc.Server(options);
    return { server, window, configuredListeners: () => 0 };
  }
  if (!Number.isInteger(window) || window < HTTP2_DEFAULT_WINDOW || window > HTTP2_MAX_WINDOW) {
    throw new RangeError(`flow-control window must be an integer in [${HTTP2_DEFAULT_WINDOW}, ${HTTP2_MAX_WINDOW}], got ${window}`);
  }
  const server = new grpc.Server({ ...options, 'grpc-node.flow_control_window': window });
  let configured = 0;
  onEachHttp2Server(server, (http2Server) => {
    applyWindow(http2Server, window);
    configured++;
  });
  return { server, window, configuredListeners: () => configured };
}

function applyWindow(http2Server: http2.Http2Server, window: number): void {
  // Stream windows: sent in the SETTINGS frame that opens every new session.
  http2Server.updateSettings({ initialWindowSize: window });
  // Connection window: RFC 9113 changes it only through WINDOW_UPDATE, which this sends at once.
  http2Server.on('session', (session: http2.ServerHttp2Session) => {
    try {
      session.setLocalWindowSize(window);
    } catch {
      // A session already closing refuses it; nothing to tune then.
    }
  });
}
