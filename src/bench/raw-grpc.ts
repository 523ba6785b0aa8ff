// gRPC spoken by hand over node:http2, for what a well-behaved client never sends: malformed
// length-prefixed frames, wrong declared sizes, truncated messages (the fuzzer and the tests), and a
// Watch client that never reads (a zero HTTP/2 stream window: the soak and the back-pressure test).
import * as http2 from 'node:http2';

export const ATTACH_PATH = '/noisescope.v1.NoiseScope/Attach';
export const WATCH_PATH = '/noisescope.v1.NoiseScope/Watch';

/** One gRPC length-prefixed message: compressed flag, 4-byte big-endian length, payload. `declared` lies about the length. */
export function grpcFrame(payload: Buffer, options: { compressed?: boolean; declared?: number } = {}): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt8(options.compressed ? 1 : 0, 0);
  head.writeUInt32BE(options.declared ?? payload.length, 1);
  return Buffer.concat([head, payload]);
}

export interface RawOutcome {
  /** grpc-status from the trailers (or trailers-only headers); null when the stream closed without one. */
  readonly status: number | null;
  readonly message: string;
  /** DATA bytes the server sent. */
  readonly bytes: number;
}

/**
 * Opens one call on `session`, writes `body`, half-closes when `end`, and resolves when the server
 * finishes the stream (or after `settleMs` without an ending, cancelling it: a server that waits for
 * more is a clean outcome too).
 */
export function rawCall(
  session: http2.ClientHttp2Session,
  path: string,
  body: Buffer,
  end = true,
  settleMs = 2_000,
  headers: http2.OutgoingHttpHeaders = {},
): Promise<RawOutcome> {
  return new Promise((resolve) => {
    const stream = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', ...headers });
    let status: number | null = null;
    let message = '';
    let bytes = 0;
    const take = (headers: http2.IncomingHttpHeaders) => {
      if (headers['grpc-status'] !== undefined) status = Number(headers['grpc-status']);
      if (typeof headers['grpc-message'] === 'string') message = decodeURI(headers['grpc-message']);
    };
    const timer = setTimeout(() => stream.close(http2.constants.NGHTTP2_CANCEL), settleMs);
    stream.on('response', take);
    stream.on('trailers', take);
    stream.on('data', (chunk: Buffer) => (bytes += chunk.length));
    stream.on('error', () => {});
    stream.on('close', () => {
      clearTimeout(timer);
      resolve({ status, message, bytes });
    });
    if (body.length > 0) stream.write(body);
    if (end) stream.end();
  });
}

export function connectRaw(address: string, settings: http2.Settings = {}): Promise<http2.ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://${address}`, { settings });
    session.once('connect', () => resolve(session));
    session.once('error', reject);
  });
}

/** A Watch call whose client never reads: its stream window is 0 until `read()` opens it. */
export async function stalledWatch(address: string) {
  const session = await connectRaw(address, { initialWindowSize: 0 });
  session.on('error', () => {});
  const stream = session.request({ ':method': 'POST', ':path': WATCH_PATH, 'content-type': 'application/grpc', te: 'trailers' });
  stream.on('error', () => {});
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  stream.end(grpcFrame(Buffer.alloc(0))); // WatchRequest{}: every run
  return {
    /** Opens the window: the client reads from now on. */
    read(): void {
      session.settings({ initialWindowSize: 16 * 1024 * 1024 });
      session.setLocalWindowSize(16 * 1024 * 1024);
    },
    /** The gRPC messages received so far (payloads, still encoded). */
    messages(): Buffer[] {
      const all = Buffer.concat(chunks);
      const out: Buffer[] = [];
      for (let at = 0; at + 5 <= all.length; ) {
        const length = all.readUInt32BE(at + 1);
        if (at + 5 + length > all.length) break;
        out.push(all.subarray(at + 5, at + 5 + length));
        at += 5 + length;
      }
      return out;
    },
    close(): void {
      stream.close(http2.constants.NGHTTP2_CANCEL);
      session.close();
    },
  };
}
