// The sidecar's resource limits in one place: defaults, validation, and the error a hit limit gives.
// Every such error names the limit, its value, and the option (and serve flag) that raises it, so a
// user who outgrows a default learns how to move it from the message alone.
import type * as http2 from 'node:http2';
import type * as grpc from '@grpc/grpc-js';
import { NoiseScopeError } from '../errors.js';
import { onEachHttp2Server } from './http2-listeners.js';

export interface SidecarLimits {
  /** Largest gRPC message the server accepts (grpc-js maxReceiveMessageLength), in bytes. */
  readonly maxMessageBytes: number;
  /** Layers (covered plus uncovered) one run's Hello may declare. */
  readonly layersPerRun: number;
  /** Largest world_size (ranks of one run). */
  readonly ranksPerRun: number;
  /** Runs held at once; an ended run (every rank said Goodbye) is forgotten to make room. */
  readonly runs: number;
  /** Events a Watch call may have queued while its client does not read; past it the oldest step/layer/health events are dropped and counted. */
  readonly watchQueueEvents: number;
  /** Steps one rank may have open (shards sent, no StepEnd yet); past it the oldest is given up, counted and reported. */
  readonly openStepsPerRank: number;
  /** Steps of one run that some but not all ranks ended; past it the oldest is given up, counted and reported. */
  readonly pendingSteps: number;
  /** Micro-batches (norms shards, or K of dense chunks) one rank may send for one step; a shard beyond it is refused. */
  readonly microBatchesPerStep: number;
}

/** Refusals a rank's stream may hold unread; past it further refusals are counted (health's refused) but not sent. */
export const UNREAD_REFUSALS = 1_024;

export type LimitName = keyof SidecarLimits;

export const DEFAULT_LIMITS: SidecarLimits = {
  // Dense chunks are ~1 MiB and a 100 000-layer Hello is a few MiB: grpc-js's 4 MiB default is too tight for the latter.
  maxMessageBytes: 16 * 1024 * 1024,
  layersPerRun: 100_000,
  ranksPerRun: 65_536,
  runs: 1_024,
  // A 50-layer run's step and layer events are ~3 KB each in memory: 1024 of them is a few MB per stalled watcher.
  watchQueueEvents: 1_024,
  // A rank's steps end in order: more than a few open at once means StepEnds are lost, not that it is busy.
  openStepsPerRank: 16,
  // Ranks a minute apart at 1 step/s stay within it; the partial-step timeout (30 s) gives most up before it.
  pendingSteps: 64,
  microBatchesPerStep: 65_536,
};

/** How a user raises each limit: the startSidecar option and, where a user would need one, the serve flag. */
const RAISE: Readonly<Record<LimitName, { readonly what: string; readonly flag: string | null }>> = {
  maxMessageBytes: { what: 'message size', flag: '--max-message-mb' },
  layersPerRun: { what: 'layers per run', flag: '--max-layers' },
  ranksPerRun: { what: 'ranks per run', flag: null },
  runs: { what: 'runs at once', flag: '--max-runs' },
  watchQueueEvents: { what: 'events queued per Watch call', flag: null },
  openStepsPerRank: { what: 'open steps per rank', flag: null },
  pendingSteps: { what: 'steps waiting for ranks', flag: null },
  microBatchesPerStep: { what: 'micro-batches per step', flag: null },
};

/** "(limit runs at once = 1024: raise it with `serve --max-runs` or startSidecar({ limits: { runs } }))" */
export function limitHint(name: LimitName, value: number): string {
  const { what, flag } = RAISE[name];
  const option = `startSidecar({ limits: { ${name} } })`;
  return `(limit ${what} = ${value}: raise it with ${flag ? `\`serve ${flag}\` or ` : ''}${option})`;
}

/** A limit-exceeded error (RESOURCE_EXHAUSTED) naming the limit, its value and how to raise it. */
export function limitExceeded(name: LimitName, value: number, what: string): NoiseScopeError {
  return new NoiseScopeError('limit-exceeded', `${what} ${limitHint(name, value)}`);
}

/** Defaults filled in; a limit that is not a whole number ≥ 1 throws a RangeError naming it. */
export function resolveLimits(limits: Partial<SidecarLimits> = {}): SidecarLimits {
  const resolved = { ...DEFAULT_LIMITS, ...limits };
  for (const [name, value] of Object.entries(resolved)) {
    if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`limits.${name} must be a whole number ≥ 1, got ${String(value)}`);
  }
  // grpc-js reads the length as a signed 32-bit value.
  if (resolved.maxMessageBytes > 2 ** 31 - 1) throw new RangeError(`limits.maxMessageBytes must be below 2 GiB, got ${resolved.maxMessageBytes}`);
  return resolved;
}

/** grpc-js server options that apply the message-size limit. */
export function messageSizeOptions(limits: SidecarLimits): grpc.ServerOptions {
  return { 'grpc.max_receive_message_length': limits.maxMessageBytes };
}

// grpc-js ends an oversize call with "Received message larger than max (N vs M)" (or "... decompresses to a size
// larger than M") from inside its own call object, out of reach of server interceptors.
const GRPC_SIZE_ERROR = /^Received message (larger than max|that decompresses to a size larger than)/;

/**
 * Makes grpc-js's oversize-message status say which limit it was and how to raise it, by appending
 * limitHint to the grpc-message trailer of such calls, on every listener grpc-js creates (http2-listeners.ts);
 * test/transport/limits-message-size.test.ts fails if a grpc-js upgrade bypasses it.
 */
export function nameMessageSizeLimit(server: grpc.Server, limits: SidecarLimits): void {
  const hint = limitHint('maxMessageBytes', limits.maxMessageBytes);
  onEachHttp2Server(server, (http2Server) => {
    http2Server.on('stream', (stream: http2.ServerHttp2Stream) => {
      // The status goes out in trailers, or in the response headers of a trailers-only response.
      const rewrite = (headers: http2.OutgoingHttpHeaders | undefined) => {
        const message = headers?.['grpc-message'];
        if (headers && typeof message === 'string' && GRPC_SIZE_ERROR.test(decodeURI(message))) {
          headers['grpc-message'] = encodeURI(`${decodeURI(message)} ${hint}`);
        }
        return headers;
      };
      const sendTrailers = stream.sendTrailers.bind(stream);
      const respond = stream.respond.bind(stream);
      stream.sendTrailers = (headers) => sendTrailers(rewrite(headers) ?? headers);
      stream.respond = (headers, options) => respond(rewrite(headers), options);
    });
  });
}
