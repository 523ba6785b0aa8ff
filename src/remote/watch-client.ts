// A remote sidecar's Watch stream, turned back into the same four Observables
// the in-process sidecar has (and recommendations$), plus the connection's state. Reconnects with back-off.
import * as grpc from '@grpc/grpc-js';
import { BehaviorSubject, ReplaySubject, Subject, type Observable } from 'rxjs';
import { bearerMetadata } from '../transport/auth.js';
import { loadProto } from '../transport/proto.js';
import { clientCredentials, type TlsClientFiles } from '../transport/tls.js';
import type { NoiseScopeClient } from '../transport/generated/noisescope/v1/NoiseScope.js';
import type { RunEvent__Output } from '../transport/generated/noisescope/v1/RunEvent.js';
import type { Health, LayerStats, Recommendation, RunInfo, StepStats } from '../types.js';
import { healthFromWire, layerStatsFromWire, recommendationFromWire, runInfoFromWire, stepStatsFromWire } from './from-wire.js';

export type ConnectionState =
  | { readonly state: 'connecting'; readonly address: string }
  | { readonly state: 'connected'; readonly address: string }
  | { readonly state: 'lost'; readonly address: string; readonly reason: string };

export interface WatchClientOptions {
  /** Only this run; default every run. */
  readonly run?: string;
  /** First retry delay after a lost connection; doubles up to maxRetryMs. Default 500. */
  readonly retryMs?: number;
  readonly maxRetryMs?: number;
  /** Sent as `authorization: Bearer <token>` on the Watch call (a sidecar started with a token). */
  readonly token?: string;
  /** TLS to a sidecar serving it: the CA that signed its certificate, and this client's own if it requires one. */
  readonly tls?: TlsClientFiles;
}

export interface RemoteSidecar {
  readonly address: string;
  readonly stats$: Observable<StepStats>;
  readonly layers$: Observable<LayerStats>;
  readonly runs$: Observable<readonly RunInfo[]>;
  readonly health$: Observable<Health>;
  /** Each run's latest recommendation when (re)connecting, then every new one. */
  readonly recommendations$: Observable<Recommendation>;
  readonly connection$: Observable<ConnectionState>;
  close(): void;
}

/**
 * One short line: grpc-js details can run to several sentences. A failed connection's are "No connection
 * established. Last error: <why>. Resolution note: …", and the why (a certificate the CA did not sign, a
 * client certificate required) is what to act on; OpenSSL's own lines are cut to their reason.
 */
export function briefDetail(details: string): string {
  const why = /^No connection established\. Last error: (?:Error: )?([\s\S]*?)\s*(?:\(\d{4}-\d\d-\d\dT[^)]*\))?\. Resolution note:/.exec(details)?.[1];
  if (why === undefined) return details.split(/\.\s|\n/)[0] ?? '';
  return /:SSL routines:[^:]*:([^:]+):/.exec(why)?.[1] ?? why.split('\n')[0]!;
}

/**
 * A plain-text client at a TLS port gets only grpc-js's "Failed to connect" (no HTTP/2 preface comes back; a port
 * where nothing listens says ECONNREFUSED instead): say what it likely means.
 */
function plainTextHint(code: grpc.status, detail: string): string {
  return code === grpc.status.UNAVAILABLE && detail === 'Failed to connect' ? '; if the sidecar serves TLS (serve --tls-cert), give its CA: --tls-ca PEM' : '';
}

/** Watches the sidecar at host:port; never throws for a lost connection, it reports it on connection$ (bad TLS files do throw). */
export function watchSidecar(address: string, options: WatchClientOptions = {}): RemoteSidecar {
  const Service = loadProto().noisescope.v1.NoiseScope;
  const serverName = options.tls?.serverName;
  const client: NoiseScopeClient = new Service(address, clientCredentials(options.tls), serverName ? { 'grpc.ssl_target_name_override': serverName } : {});
  const metadata = () => (options.token === undefined ? new grpc.Metadata() : bearerMetadata(options.token));
  const stats = new ReplaySubject<StepStats>(1);
  const layers = new ReplaySubject<LayerStats>(1);
  const health = new ReplaySubject<Health>(1);
  const runs = new ReplaySubject<readonly RunInfo[]>(1);
  const recommendations = new ReplaySubject<Recommendation>(1);
  const connection = new BehaviorSubject<ConnectionState>({ state: 'connecting', address });
  const known = new Map<string, RunInfo>();
  // A reconnect re-delivers each run's latest recommendation: pass on only new ones.
  const lastRecommendation = new Map<string, string>();
  let call: grpc.ClientReadableStream<RunEvent__Output> | null = null;
  let timer: NodeJS.Timeout | null = null;
  let closed = false;
  let delay = options.retryMs ?? 500;

  const setConnected = () => {
    delay = options.retryMs ?? 500;
    if (connection.value.state !== 'connected') connection.next({ state: 'connected', address });
  };
  const onEvent = (e: RunEvent__Output) => {
    setConnected();
    if (e.runStarted || e.runUpdated || e.runEnded) {
      const info = runInfoFromWire((e.runStarted ?? e.runUpdated ?? e.runEnded)!, Boolean(e.runEnded));
      known.set(info.run, info);
      runs.next([...known.values()]);
    } else if (e.step) {
      const step = stepStatsFromWire(e.step);
      // A run's source is settled by its first steps, after run_started was sent: follow the steps.
      const info = known.get(step.run);
      if (info && info.source !== step.source) {
        known.set(step.run, { ...info, source: step.source });
        runs.next([...known.values()]);
      }
      stats.next(step);
    }
    else if (e.layers) layers.next(layerStatsFromWire(e.layers));
    else if (e.health) health.next(healthFromWire(e.health));
    else if (e.recommendation) {
      const r = recommendationFromWire(e.recommendation);
      const key = `${r.sequence}@${r.step}@${r.unixMs}`;
      if (lastRecommendation.get(r.run) !== key) {
        lastRecommendation.set(r.run, key);
        recommendations.next(r);
      }
    }
  };
  const open = () => {
    if (closed) return;
    const current = client.Watch(options.run ? { run: options.run } : {}, metadata());
    call = current;
    current.on('metadata', setConnected);
    current.on('data', onEvent);
    current.on('error', () => {}); // 'status' carries it
    current.on('status', (status: grpc.StatusObject) => {
      if (closed || call !== current) return;
      const detail = briefDetail(status.details || '');
      const reason = status.code === grpc.status.OK ? 'the sidecar closed the stream' : `${grpc.status[status.code] ?? status.code}${detail ? `: ${detail}` : ''}`;
      connection.next({ state: 'lost', address, reason: `${reason} (retrying)${options.tls ? '' : plainTextHint(status.code, detail)}` });
      timer = setTimeout(open, delay);
      delay = Math.min(delay * 2, options.maxRetryMs ?? 5000);
    });
  };
  open();

  return {
    address,
    stats$: stats.asObservable(),
    layers$: layers.asObservable(),
    runs$: runs.asObservable(),
    health$: health.asObservable(),
    recommendations$: recommendations.asObservable(),
    connection$: connection.asObservable(),
    close() {
      if (closed) return;
      closed = true;
      if (timer) clearTimeout(timer);
      call?.cancel();
      client.close();
      for (const s of [stats, layers, health, runs, recommendations, connection] as Subject<unknown>[]) s.complete();
    },
  };
}
