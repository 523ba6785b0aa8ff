// The Node side of the wire benchmark: a grpc-js client, run as its own process (so it does not
// share the server's event loop), speaking the same line protocol as test/python/bench_wire.py:
//
//   node wire-client.js --addresses HOST:PORT[,…] --sizes BYTES[,BYTES…] --mib N --repeats R
//   → one JSON line per measurement: {"client","address","size","messages","bytes","seconds","serverCpuSeconds","repeat"}
//
// With several addresses each repeat visits every server in turn, so load drift biases none.
// Each message is serialised once and sent as is, as the Python client does: the figure is the
// wire's, not protobuf encoding's. The server's reply (messages and bytes it decoded) is checked.
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { UPLOAD_METHOD, wireBenchService, type Received } from './wire-bench-service.js';

export interface WireMeasurement {
  readonly client: string;
  readonly address: string;
  readonly size: number;
  readonly messages: number;
  readonly bytes: number;
  readonly seconds: number;
  /** The server process's CPU time (user + system) over the call. */
  readonly serverCpuSeconds: number;
  readonly repeat: number;
}

const WARMUP_MESSAGES = 8;

function upload(client: grpc.Client, message: Buffer, count: number): Promise<Received> {
  const deserialize = wireBenchService().Upload?.responseDeserialize as (b: Buffer) => Received;
  return new Promise((resolve, reject) => {
    const call = client.makeClientStreamRequest<Buffer, Received>(UPLOAD_METHOD, (b) => b, deserialize, (error, reply) =>
      error || reply === undefined ? reject(error ?? new Error('no reply')) : resolve(reply),
    );
    void (async () => {
      for (let i = 0; i < count; i++) {
        if (!call.write(message)) await once(call, 'drain');
      }
      call.end();
    })().catch(reject);
  });
}

export async function measureNodeClient(
  addresses: readonly string[],
  sizes: readonly number[],
  mib: number,
  repeats: number,
): Promise<WireMeasurement[]> {
  const clients = addresses.map((address) => ({ address, client: new grpc.Client(address, grpc.credentials.createInsecure()) }));
  const serialize = wireBenchService().Upload?.requestSerialize as (p: { data: Buffer }) => Buffer;
  const results: WireMeasurement[] = [];
  try {
    for (const size of sizes) {
      const message = serialize({ data: Buffer.alloc(size, 0x5a) });
      const messages = Math.max(1, Math.round((mib * 1024 * 1024) / size));
      for (const { client } of clients) await upload(client, message, WARMUP_MESSAGES); // connection, windows, JIT
      for (let repeat = 0; repeat < repeats; repeat++) {
        for (const { address, client } of clients) {
          const start = process.hrtime.bigint();
          const received = await upload(client, message, messages);
          const seconds = Number(process.hrtime.bigint() - start) / 1e9;
          if (received.messages !== messages || received.bytes !== messages * size) {
            throw new Error(`${address} decoded ${received.messages} messages / ${received.bytes} bytes of ${messages} / ${messages * size}`);
          }
          results.push({ client: 'node', address, size, messages, bytes: received.bytes, seconds, serverCpuSeconds: received.serverCpuMicros / 1e6, repeat });
        }
      }
    }
  } finally {
    for (const { client } of clients) client.close();
  }
  return results;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({
    options: { addresses: { type: 'string' }, sizes: { type: 'string' }, mib: { type: 'string' }, repeats: { type: 'string' } },
  });
  const sizes = (values.sizes ?? String(1 << 20)).split(',').map(Number);
  measureNodeClient((values.addresses ?? '127.0.0.1:50051').split(','), sizes, Number(values.mib ?? 256), Number(values.repeats ?? 3)).then(
    (results) => results.forEach((r) => process.stdout.write(`${JSON.stringify(r)}\n`)),
    (error: unknown) => {
      process.stderr.write(`wire-client: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exitCode = 1;
    },
  );
}
