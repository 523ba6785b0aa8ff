// Mounts the dashboard on a terminal. The only entry the CLI uses.
import { render, type Instance } from 'ink';
import { Dashboard } from './dashboard.js';
import type { DashboardSources } from './sources.js';

export type { DashboardSources, ConnectionState } from './sources.js';

export interface DashboardOptions {
  /** Renders per second at most; default 15. */
  readonly maxFps?: number;
  readonly onQuit?: () => void;
  readonly address?: string;
  readonly stdout?: NodeJS.WriteStream;
  readonly stdin?: NodeJS.ReadStream;
}

export function renderDashboard(sources: DashboardSources, options: DashboardOptions = {}): Instance {
  const fps = options.maxFps ?? 15;
  return render(<Dashboard sources={sources} updatesPerSecond={fps} {...(options.onQuit ? { onQuit: options.onQuit } : {})} {...(options.address ? { address: options.address } : {})} />, {
    maxFps: fps,
    exitOnCtrlC: false,
    patchConsole: true,
    ...(options.stdout ? { stdout: options.stdout } : {}),
    ...(options.stdin ? { stdin: options.stdin } : {}),
  });
}
