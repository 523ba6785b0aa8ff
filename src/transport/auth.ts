// Bearer tokens: every RPC presents `authorization: Bearer <token>` in its call metadata, checked by a
// server interceptor before the handler sees anything. A sidecar token opens everything; a run token
// opens one run only (Attach ranks of that run, Watch that run). Tokens never appear in an error message.
import { createHash, timingSafeEqual } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { NoiseScopeError } from '../errors.js';

export interface AuthOptions {
  /** The sidecar's token: any RPC, any run. */
  readonly token?: string;
  /** Tokens that each open one run only (run name → token). */
  readonly runTokens?: Readonly<Record<string, string>>;
}

/** Fewer characters than this are refused: a token is only as good as its entropy. */
export const MIN_TOKEN_LENGTH = 16;

export const TOKEN_HOWTO =
  'set one with --token-file PATH (a file holding the token), --token TOKEN or the NOISESCOPE_TOKEN environment variable ' +
  '(for example `openssl rand -hex 32`), and give the same token to the hook: watch(token=...) or NOISESCOPE_TOKEN';

const UNAUTHENTICATED_DETAILS =
  "missing or wrong bearer token: this sidecar requires 'authorization: Bearer <token>' on every call " +
  "(the hook: watch(token=...) or NOISESCOPE_TOKEN; the dashboard: --token-file or NOISESCOPE_TOKEN)";

/** A token as given, or an error naming where it came from (`what`) — never echoing the token. */
export function validateToken(token: string, what: string): string {
  if (token.length < MIN_TOKEN_LENGTH) {
    throw new NoiseScopeError('invalid-message', `${what}: a token needs at least ${MIN_TOKEN_LENGTH} characters, got ${token.length} (try \`openssl rand -hex 32\`)`);
  }
  // It travels in an HTTP/2 header: printable ASCII without spaces.
  if (!/^[\x21-\x7e]+$/.test(token)) {
    throw new NoiseScopeError('invalid-message', `${what}: a token must be printable ASCII without spaces or newlines`);
  }
  return token;
}

const digest = (value: string | Buffer): Buffer => createHash('sha256').update(value).digest();

/** Equal-length digests compared in constant time: neither the token's length nor a matching prefix leaks. */
function sameDigest(a: Buffer, b: Buffer): boolean {
  return timingSafeEqual(a, b);
}

type Grant = { readonly all: true } | { readonly all: false; readonly runs: ReadonlySet<string> };

/** Who a presented token is; null: nobody. */
export class Authenticator {
  private readonly sidecar: Buffer | null;
  private readonly runs: readonly { readonly run: string; readonly digest: Buffer }[];

  constructor(options: AuthOptions) {
    this.sidecar = options.token === undefined ? null : digest(validateToken(options.token, 'the sidecar token'));
    this.runs = Object.entries(options.runTokens ?? {}).map(([run, token]) => {
      if (run === '') throw new NoiseScopeError('invalid-message', 'a run token needs a run name');
      return { run, digest: digest(validateToken(token, `the token of run '${run}'`)) };
    });
  }

  /** True when any token is configured, i.e. every RPC must present one. */
  get required(): boolean {
    return this.sidecar !== null || this.runs.length > 0;
  }

  /** Every configured digest is compared, so the time taken does not say which one matched. */
  grant(metadata: grpc.Metadata): Grant | null {
    const presented = bearer(metadata);
    if (presented === null) return null;
    const mine = digest(presented);
    const all = this.sidecar !== null && sameDigest(mine, this.sidecar);
    const runs = new Set<string>();
    for (const entry of this.runs) if (sameDigest(mine, entry.digest)) runs.add(entry.run);
    if (all) return { all: true };
    return runs.size > 0 ? { all: false, runs } : null;
  }
}

function bearer(metadata: grpc.Metadata): Buffer | null {
  const values = metadata.get('authorization');
  if (values.length !== 1) return null;
  const value = values[0];
  const text = typeof value === 'string' ? value : value?.toString('latin1');
  const match = text === undefined ? null : /^Bearer ([\x21-\x7e]+)$/.exec(text);
  return match?.[1] === undefined ? null : Buffer.from(match[1], 'latin1');
}

/** The run a call's message addresses: a Hello's on Attach, the filter on Watch ('' for every run). */
function runOf(message: unknown): string | null {
  const m = message as { hello?: { run?: unknown } | null; run?: unknown } | null;
  if (m?.hello && typeof m.hello.run === 'string') return m.hello.run;
  if (m && 'run' in m && typeof m.run === 'string') return m.run;
  return null;
}

/**
 * The interceptor for `auth`: a call without a valid token ends with UNAUTHENTICATED before its handler
 * starts; a run token's Hello or Watch for another run (or for every run) ends with PERMISSION_DENIED.
 */
export function authInterceptor(auth: Authenticator): grpc.ServerInterceptor {
  return (_method, call) => {
    let grant: Grant | null = null;
    let denied = false;
    const listener = new grpc.ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        grant = auth.grant(metadata);
        if (grant === null) {
          denied = true;
          call.sendStatus({ code: grpc.status.UNAUTHENTICATED, details: UNAUTHENTICATED_DETAILS });
          return;
        }
        next(metadata);
      })
      .withOnReceiveMessage((message, next) => {
        if (denied || grant === null) return;
        if (!grant.all) {
          const run = runOf(message);
          if (run !== null && !grant.runs.has(run)) {
            denied = true;
            // The all-runs Watch is the dashboard's without --run: say how to name the run.
            const named = grant.runs.size > 1 ? 'NAME' : [...grant.runs][0];
            const what = run === '' ? `every run: watch it by name (noisescope dashboard --run ${named})` : `run '${run}'`;
            call.sendStatus({
              code: grpc.status.PERMISSION_DENIED,
              details: `this token opens only run${grant.runs.size > 1 ? 's' : ''} ${[...grant.runs].map((r) => `'${r}'`).join(', ')}, not ${what}`,
            });
            return;
          }
        }
        next(message);
      })
      .build();
    return new grpc.ServerInterceptingCall(call, new grpc.ResponderBuilder().withStart((next) => next(listener)).build());
  };
}

/** Refuses to expose the sidecar beyond this machine without a token. */
export function requireTokenOffLoopback(host: string, loopback: boolean, auth: Authenticator): void {
  if (loopback || auth.required) return;
  throw new NoiseScopeError(
    'invalid-message',
    `refusing to listen on ${host} without a token: anyone who can reach it could send or read gradients. To listen there, ${TOKEN_HOWTO}. ` +
      'Or bind 127.0.0.1 (the default) and reach it over an SSH tunnel.',
  );
}

/** Call metadata carrying `token` (clients). */
export function bearerMetadata(token: string): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}
