import { status } from '@grpc/grpc-js';

/** What went wrong, in the sidecar's terms; each maps to one gRPC status. */
export type NoiseScopeErrorCode =
  | 'invalid-message' // malformed or out of range: sizes, counts, NaN, negative norms
  | 'no-hello' // a message before the stream's Hello
  | 'protocol-mismatch' // a hook speaking another protocol version
  | 'layout-mismatch' // a rank whose layers or world size disagree with its run
  | 'unknown-run' // a Watch for a run the sidecar has not seen
  | 'unknown-layer' // a layer index the run did not declare
  | 'step-regression' // a step older than one the rank already ended
  | 'duplicate' // a shard or step end already accepted
  | 'incomplete-step' // a step end whose shards did not all arrive
  | 'not-implemented' // payloads reserved for later versions
  | 'limit-exceeded' // a bounded resource is full
  | 'internal';

const GRPC_STATUS: Readonly<Record<NoiseScopeErrorCode, status>> = {
  'invalid-message': status.INVALID_ARGUMENT,
  'no-hello': status.FAILED_PRECONDITION,
  'protocol-mismatch': status.FAILED_PRECONDITION,
  'layout-mismatch': status.FAILED_PRECONDITION,
  'unknown-run': status.NOT_FOUND,
  'unknown-layer': status.INVALID_ARGUMENT,
  'step-regression': status.OUT_OF_RANGE,
  duplicate: status.ALREADY_EXISTS,
  'incomplete-step': status.FAILED_PRECONDITION,
  'not-implemented': status.UNIMPLEMENTED,
  'limit-exceeded': status.RESOURCE_EXHAUSTED,
  internal: status.INTERNAL,
};

export class NoiseScopeError extends Error {
  override name = 'NoiseScopeError';
  readonly code: NoiseScopeErrorCode;

  constructor(code: NoiseScopeErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }

  /** The gRPC status code this error is reported with. */
  get grpcStatus(): status {
    return GRPC_STATUS[this.code];
  }
}

/** Normalises anything thrown into a NoiseScopeError (unknowns become 'internal'). */
export function toNoiseScopeError(error: unknown): NoiseScopeError {
  if (error instanceof NoiseScopeError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new NoiseScopeError('internal', `internal error: ${message}`, { cause: error });
}
