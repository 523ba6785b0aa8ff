// A real sidecar on a free port and a raw client for each test, closed after it.
import { filter, firstValueFrom, take, toArray } from 'rxjs';
import { afterEach, beforeEach } from 'vitest';
import { startSidecar, type Sidecar } from '../../src/index.js';
import type { NoiseScopeClient } from '../../src/transport/generated/noisescope/v1/NoiseScope.js';
import type { StepStats } from '../../src/types.js';
import { connect } from './rank-client.js';

export interface SidecarUnderTest {
  readonly sidecar: Sidecar;
  readonly client: NoiseScopeClient;
  /** The next `n` StepStats of `run` on stats$. */
  steps(n: number, run?: string): Promise<StepStats[]>;
}

export function sidecarEachTest(): SidecarUnderTest {
  let sidecar: Sidecar | null = null;
  let client: NoiseScopeClient | null = null;
  beforeEach(async () => {
    sidecar = await startSidecar({ port: 0, healthIntervalMs: 50 });
    client = connect(sidecar.address);
  });
  afterEach(async () => {
    client?.close();
    await sidecar?.close();
  });
  const started = <T>(value: T | null): T => {
    if (value === null) throw new Error('the sidecar starts in beforeEach: use it inside a test');
    return value;
  };
  return {
    get sidecar() {
      return started(sidecar);
    },
    get client() {
      return started(client);
    },
    steps(n, run = 'test-run') {
      return firstValueFrom(started(sidecar).stats$.pipe(filter((s) => s.run === run), take(n), toArray()));
    },
  };
}
