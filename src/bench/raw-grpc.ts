// gRPC spoken by hand over node:http2, for what a well-behaved client never sends: malformed
// length-prefixed frames, wrong declared sizes, truncated messages (the fuzzer and the tests).
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
