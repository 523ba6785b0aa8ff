// The one place we reach into grpc-js: its private `createHttp2Server(credentials)` makes every
// listener's Node Http2Server (bindAsync and createConnectionInjector), and grpc-js 1.14 offers no
// public way to configure those servers. flow-control.ts (HTTP/2 windows) and limits.ts (naming the
// message-size limit in its status) each add a configurer here; their tests read the effect from real
// connections, so a grpc-js upgrade that bypasses this fails there.
import type * as http2 from 'node:http2';
import type * as grpc from '@grpc/grpc-js';

type CreateHttp2Server = (this: grpc.Server, credentials: grpc.ServerCredentials) => http2.Http2Server;

/** Calls `configure` on each Node Http2Server `server` creates from now on; false when grpc-js no longer has the hook. */
export function onEachHttp2Server(server: grpc.Server, configure: (http2Server: http2.Http2Server) => void): boolean {
  const original: unknown = Reflect.get(server, 'createHttp2Server');
  if (typeof original !== 'function') return false;
  const create = original as CreateHttp2Server;
  Reflect.set(server, 'createHttp2Server', function (this: grpc.Server, credentials: grpc.ServerCredentials) {
    const http2Server = create.call(this, credentials);
    configure(http2Server);
    return http2Server;
  });
  return true;
}
