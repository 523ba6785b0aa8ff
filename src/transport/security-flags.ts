// Command-line tokens and TLS files → sidecar and Watch-client options. Each bad value is a UsageError
// naming its flag (or environment variable) — and never the token itself.
import { readFileSync } from 'node:fs';
import { UsageError } from '../cli/flags.js';
import { NoiseScopeError } from '../errors.js';
import { validateToken, type AuthOptions } from './auth.js';
import type { TlsClientFiles, TlsServerFiles } from './tls.js';

export const TOKEN_ENV = 'NOISESCOPE_TOKEN';

const TOKEN_FLAGS = {
  token: { type: 'string' },
  'token-file': { type: 'string' },
} as const;

/** `serve`: the sidecar's token, run tokens (`--run-token RUN=FILE`, repeatable) and its TLS files. */
export const SERVE_SECURITY_FLAGS = {
  ...TOKEN_FLAGS,
  'run-token': { type: 'string', multiple: true },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'tls-client-ca': { type: 'string' },
} as const;

/** `dashboard`: the token to present and the TLS files to verify the sidecar with (and to be verified). */
export const CLIENT_SECURITY_FLAGS = {
  ...TOKEN_FLAGS,
  'tls-ca': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'tls-server-name': { type: 'string' },
} as const;

interface TokenValues {
  readonly token?: string | undefined;
  readonly 'token-file'?: string | undefined;
}

function checked(token: string, what: string): string {
  try {
    return validateToken(token, what);
  } catch (error) {
    throw error instanceof NoiseScopeError ? new UsageError(error.message) : error;
  }
}

/** A token file's content without its trailing newline. */
function tokenFromFile(file: string, what: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new UsageError(`${what} ${file}: cannot read it (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
  }
  return checked(text.replace(/\r?\n$/, ''), `${what} ${file}`);
}

/** --token, else --token-file, else $NOISESCOPE_TOKEN; undefined when none is given. */
export function tokenFromFlags(values: TokenValues, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const { token, 'token-file': file } = values;
  if (token !== undefined && file !== undefined) throw new UsageError('--token and --token-file both given: give one');
  if (token !== undefined) return checked(token, '--token');
  if (file !== undefined) return tokenFromFile(file, '--token-file');
  const fromEnv = env[TOKEN_ENV];
  return fromEnv === undefined || fromEnv === '' ? undefined : checked(fromEnv, `$${TOKEN_ENV}`);
}

/** `--run-token RUN=FILE` entries → run → token. */
export function runTokensFromFlags(entries: readonly string[] | undefined): Record<string, string> {
  const tokens: Record<string, string> = {};
  for (const entry of entries ?? []) {
    const at = entry.indexOf('=');
    if (at <= 0 || at === entry.length - 1) throw new UsageError(`--run-token must be RUN=FILE (a file holding that run's token), got '${entry}'`);
    const run = entry.slice(0, at);
    if (Object.hasOwn(tokens, run)) throw new UsageError(`--run-token names run '${run}' twice`);
    tokens[run] = tokenFromFile(entry.slice(at + 1), `--run-token ${run}=`);
  }
  return tokens;
}

/** The sidecar's auth and TLS options from `serve`'s flags. */
export function serveSecurityFromFlags(
  values: TokenValues & {
    readonly 'run-token'?: string[] | undefined;
    readonly 'tls-cert'?: string | undefined;
    readonly 'tls-key'?: string | undefined;
    readonly 'tls-client-ca'?: string | undefined;
  },
  env: NodeJS.ProcessEnv = process.env,
): AuthOptions & { tls?: TlsServerFiles } {
  const token = tokenFromFlags(values, env);
  const runTokens = runTokensFromFlags(values['run-token']);
  const { 'tls-cert': certFile, 'tls-key': keyFile, 'tls-client-ca': clientCaFile } = values;
  if ((certFile === undefined) !== (keyFile === undefined)) throw new UsageError('--tls-cert and --tls-key go together: give both');
  if (clientCaFile !== undefined && certFile === undefined) throw new UsageError('--tls-client-ca needs TLS: give --tls-cert and --tls-key too');
  return {
    ...(token !== undefined ? { token } : {}),
    ...(Object.keys(runTokens).length > 0 ? { runTokens } : {}),
    ...(certFile !== undefined && keyFile !== undefined
      ? { tls: { certFile, keyFile, ...(clientCaFile !== undefined ? { clientCaFile } : {}) } }
      : {}),
  };
}

/** The Watch client's token and TLS files from `dashboard`'s flags ($NOISESCOPE_TLS_CA/_CERT/_KEY/_SERVER_NAME as for the hook). */
export function clientSecurityFromFlags(
  values: TokenValues & {
    readonly 'tls-ca'?: string | undefined;
    readonly 'tls-cert'?: string | undefined;
    readonly 'tls-key'?: string | undefined;
    readonly 'tls-server-name'?: string | undefined;
  },
  env: NodeJS.ProcessEnv = process.env,
): { token?: string; tls?: TlsClientFiles } {
  const token = tokenFromFlags(values, env);
  const pick = (flag: 'tls-ca' | 'tls-cert' | 'tls-key' | 'tls-server-name', name: string) => values[flag] ?? (env[name] || undefined);
  const caFile = pick('tls-ca', 'NOISESCOPE_TLS_CA');
  const certFile = pick('tls-cert', 'NOISESCOPE_TLS_CERT');
  const keyFile = pick('tls-key', 'NOISESCOPE_TLS_KEY');
  if ((certFile === undefined) !== (keyFile === undefined)) throw new UsageError('--tls-cert and --tls-key go together: give both');
  const tls = caFile !== undefined || certFile !== undefined;
  const serverName = pick('tls-server-name', 'NOISESCOPE_TLS_SERVER_NAME');
  if (serverName !== undefined && !tls) throw new UsageError('--tls-server-name is the name checked against the sidecar\'s TLS certificate, but TLS is off: give --tls-ca too');
  return {
    ...(token !== undefined ? { token } : {}),
    ...(tls
      ? {
          tls: {
            ...(caFile !== undefined ? { caFile } : {}),
            ...(certFile !== undefined && keyFile !== undefined ? { certFile, keyFile } : {}),
            ...(serverName !== undefined ? { serverName } : {}),
          },
        }
      : {}),
  };
}
