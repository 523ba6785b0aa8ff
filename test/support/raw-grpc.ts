// A Watch client that never reads (a zero HTTP/2 stream window), spoken by hand over node:http2.
import * as http2 from 'node:http2';
import { connectRaw, grpcFrame, WATCH_PATH } from '../../src/bench/raw-grpc.js';

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
