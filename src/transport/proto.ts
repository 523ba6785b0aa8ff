import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { ProtoGrpcType } from './generated/noisescope.js';

export const PROTO_FILE = 'noisescope/v1/noisescope.proto';

/** The proto/ folder, found upward from this module (src/ in tests, dist/src/ when built). */
export function protoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, 'proto');
    if (existsSync(join(candidate, PROTO_FILE))) return candidate;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`cannot find proto/${PROTO_FILE} above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
}

// Options must match `npm run gen:types` so the committed types describe what is loaded.
export const LOADER_OPTIONS: protoLoader.Options = {
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

let cached: ProtoGrpcType | undefined;

/** The contract, loaded at run time from the same .proto the Python hook is generated from. */
export function loadProto(): ProtoGrpcType {
  cached ??= grpc.loadPackageDefinition(
    protoLoader.loadSync(PROTO_FILE, { ...LOADER_OPTIONS, includeDirs: [protoRoot()] }),
  ) as unknown as ProtoGrpcType;
  return cached;
}
