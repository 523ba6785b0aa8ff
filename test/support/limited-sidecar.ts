// A real sidecar started with given limits inside a test, and a raw client to it; both closed after the test.
import { afterEach } from 'vitest';
import { startSidecar, type Sidecar, type SidecarLimits, type SidecarOptions } from '../../src/index.js';
import type { NoiseScopeClient } from '../../src/transport/generated/noisescope/v1/NoiseScope.js';
import { connect } from './rank-client.js';

export interface LimitedSidecars {
  start(limits: Partial<SidecarLimits>, options?: SidecarOptions): Promise<{ readonly sidecar: Sidecar; readonly client: NoiseScopeClient }>;
  /** Closed after the test, before the sidecar (Watch clients, raw calls). */
  track(closeable: { close(): void }): void;
}

export function limitedSidecars(): LimitedSidecars {
  let sidecar: Sidecar | null = null;
  const closeables: { close(): void }[] = [];
  afterEach(async () => {
    for (const c of closeables.splice(0)) c.close();
    await sidecar?.close();
    sidecar = null;
  });
  return {
    async start(limits, options = {}) {
      sidecar = await startSidecar({ port: 0, healthIntervalMs: 20, ...options, limits });
      const client = connect(sidecar.address);
      closeables.push(client);
      return { sidecar, client };
    },
    track(closeable) {
      closeables.push(closeable);
    },
  };
}
