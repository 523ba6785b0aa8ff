// A throughput-only gRPC service for the wire benchmark, kept apart from the product contract.
// Defined in code (protobufjs JSON) so it ships in dist/ without a .proto; equivalent to:
//
//   package noisescope.bench.v1;
//   message Payload  { bytes data = 1; }
//   message Received { uint64 messages = 1; uint64 bytes = 2; uint64 server_cpu_micros = 3; }
//   service WireBench { rpc Upload(stream Payload) returns (Received); }
//
// Payloads are decoded by protobufjs as the sidecar's shards are (a Buffer view per message), and
// only counted: the figure is the transport's ceiling, which dense ingest is measured against.
// The reply carries the server process's CPU time over the call: on a busy machine throughput
// swings with the neighbours' load, CPU per byte much less.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { createWindowedServer } from '../transport/flow-control.js';
import { shutdownServer } from '../transport/server.js';

export const UPLOAD_METHOD = '/noisescope.bench.v1.WireBench/Upload';

/** Room for 4 MiB payloads plus framing (grpc-js refuses messages over 4 MiB by default). */
export const MAX_BENCH_MESSAGE = 16 * 1024 * 1024;

const DESCRIPTOR: Parameters<typeof protoLoader.fromJSON>[0] = {
  nested: {
    noisescope: {
      nested: {
        bench: {
          nested: {
            v1: {
              nested: {
                Payload: { fields: { data: { type: 'bytes', id: 1 } } },
                Received: {
                  fields: { messages: { type: 'uint64', id: 1 }, bytes: { type: 'uint64', id: 2 }, serverCpuMicros: { type: 'uint64', id: 3 } },
                },
                WireBench: { methods: { Upload: { requestType: 'Payload', requestStream: true, responseType: 'Received', comment: '' } } },
              },
            },
          },
        },
      },
    },
  },
};

export interface Payload {
  readonly data: Buffer;
}

export interface Received {
  readonly messages: number;
  readonly bytes: number;
  readonly serverCpuMicros: number;
}

export function wireBenchService(): grpc.ServiceDefinition {
  const definition = protoLoader.fromJSON(DESCRIPTOR, { longs: Number, defaults: true });
  const service = definition['noisescope.bench.v1.WireBench'];
  if (service === undefined || !('Upload' in service)) throw new Error('wire bench descriptor has no WireBench service');
  return service as grpc.ServiceDefinition;
}

function upload(call: grpc.ServerReadableStream<Payload, Received>, callback: grpc.sendUnaryData<Received>): void {
  const cpuAtStart = process.cpuUsage();
  let messages = 0;
  let bytes = 0;
  call.on('data', (payload: Payload) => {
    messages++;
    bytes += payload.data.length;
  });
  call.on('end', () => {
    const cpu = process.cpuUsage(cpuAtStart);
    callback(null, { messages, bytes, serverCpuMicros: cpu.user + cpu.system });
  });
  call.on('error', () => {}); // a cancelled client; nothing to report to it
}

export interface WireBenchServer {
  readonly address: string;
  /** The HTTP/2 receive window in force; null: Node's 64 KiB defaults. */
  readonly window: number | null;
  close(): Promise<void>;
}

/** A loopback WireBench server with the given receive window (null: grpc-js and Node defaults). */
export async function startWireBenchServer(window: number | null): Promise<WireBenchServer> {
  const { server } = createWindowedServer(window, { 'grpc.max_receive_message_length': MAX_BENCH_MESSAGE });
  server.addService(wireBenchService(), { Upload: upload });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, p) => (error ? reject(error) : resolve(p))),
  );
  return { address: `127.0.0.1:${port}`, window, close: () => shutdownServer(server) };
}
