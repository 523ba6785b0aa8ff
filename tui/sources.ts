import type { Observable } from 'rxjs';
import type { Health, LayerStats, Recommendation, RunInfo, StepStats } from '../src/types.js';

/** What the dashboard subscribes to: the sidecar's public Observables, nothing else. */
export interface DashboardSources {
  readonly stats$: Observable<StepStats>;
  readonly layers$: Observable<LayerStats>;
  readonly runs$: Observable<readonly RunInfo[]>;
  readonly health$: Observable<Health>;
  /** Optional: the policy's advice per run (a sidecar without it shows no recommendation). */
  readonly recommendations$?: Observable<Recommendation>;
  /** Optional: the connection to a remote sidecar (`noisescope dashboard`); absent in-process. */
  readonly connection$?: Observable<ConnectionState>;
  /** Optional: a line of the training job's own output (the demo). */
  readonly log$?: Observable<string>;
}

export type ConnectionState =
  | { readonly state: 'connecting'; readonly address: string }
  | { readonly state: 'connected'; readonly address: string }
  | { readonly state: 'lost'; readonly address: string; readonly reason: string };
