// TLS for the sidecar (server certificate and key, optionally client certificates required and verified
// against a CA) and for its clients (the CA that signed the sidecar's certificate, optionally their own).
// PEM files are read and parsed up front, so a wrong path or a key that is not the certificate's is an
// error naming the file before anything binds or connects.
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { NoiseScopeError } from '../errors.js';

export interface TlsServerFiles {
  /** The sidecar's certificate chain (PEM). */
  readonly certFile: string;
  /** Its private key (PEM). */
  readonly keyFile: string;
  /** When set, every client must present a certificate signed by this CA (PEM). */
  readonly clientCaFile?: string;
}

export interface TlsClientFiles {
  /** The CA that signed the sidecar's certificate (PEM); absent: the system's roots. */
  readonly caFile?: string;
  /** This client's certificate and key (PEM), for a sidecar that requires client certificates. */
  readonly certFile?: string;
  readonly keyFile?: string;
  /** The name checked against the sidecar's certificate instead of the address's host (it names another). */
  readonly serverName?: string;
}

function bad(message: string, cause?: unknown): NoiseScopeError {
  return new NoiseScopeError('invalid-message', message, cause === undefined ? undefined : { cause });
}

function readPem(file: string, what: string): Buffer {
  let pem: Buffer;
  try {
    pem = readFileSync(file);
  } catch (error) {
    throw bad(`${what} ${file}: cannot read it (${(error as NodeJS.ErrnoException).code ?? String(error)})`, error);
  }
  if (!pem.includes('-----BEGIN ')) throw bad(`${what} ${file}: not a PEM file (no '-----BEGIN' line)`);
  return pem;
}

function certificate(file: string, what: string): { pem: Buffer; x509: X509Certificate } {
  const pem = readPem(file, what);
  try {
    return { pem, x509: new X509Certificate(pem) };
  } catch (error) {
    throw bad(`${what} ${file}: not a valid X.509 certificate (${(error as Error).message})`, error);
  }
}

function privateKey(file: string, what: string): { pem: Buffer; key: KeyObject } {
  const pem = readPem(file, what);
  try {
    return { pem, key: createPrivateKey(pem) };
  } catch (error) {
    // The parser's message never quotes the key.
    throw bad(`${what} ${file}: not a valid unencrypted private key (${(error as Error).message})`, error);
  }
}

function certAndKey(certFile: string, keyFile: string, whose: string): { cert: Buffer; key: Buffer } {
  const cert = certificate(certFile, `${whose} certificate`);
  const key = privateKey(keyFile, `${whose} key`);
  if (!cert.x509.checkPrivateKey(key.key)) throw bad(`${whose} key ${keyFile} is not the key of the certificate ${certFile}`);
  return { cert: cert.pem, key: key.pem };
}

/** Server credentials: plain text without `tls`, else TLS (and client certificates when clientCaFile is set). */
export function serverCredentials(tls: TlsServerFiles | undefined): grpc.ServerCredentials {
  if (tls === undefined) return grpc.ServerCredentials.createInsecure();
  const { cert, key } = certAndKey(tls.certFile, tls.keyFile, 'the sidecar TLS');
  const clientCa = tls.clientCaFile === undefined ? null : certificate(tls.clientCaFile, 'the client CA').pem;
  return grpc.ServerCredentials.createSsl(clientCa, [{ cert_chain: cert, private_key: key }], clientCa !== null);
}

/** Client credentials: plain text without `tls`, else TLS verifying the sidecar against caFile. */
export function clientCredentials(tls: TlsClientFiles | undefined): grpc.ChannelCredentials {
  if (tls === undefined) return grpc.credentials.createInsecure();
  if ((tls.certFile === undefined) !== (tls.keyFile === undefined)) {
    throw bad('a client certificate needs its key and the key its certificate: give both or neither');
  }
  const ca = tls.caFile === undefined ? null : certificate(tls.caFile, 'the TLS CA').pem;
  const own = tls.certFile !== undefined && tls.keyFile !== undefined ? certAndKey(tls.certFile, tls.keyFile, 'the client') : null;
  return grpc.credentials.createSsl(ca, own?.key ?? null, own?.cert ?? null);
}
