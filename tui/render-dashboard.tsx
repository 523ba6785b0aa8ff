// Mounts the dashboard on a terminal. The only entry the CLI uses.
import { render, type Instance } from 'ink';
import { Dashboard } from './dashboard.js';
import type { DashboardSources } from './sources.js';

export type { DashboardSources, ConnectionState } from './sources.js';

export interface DashboardOptions {
  /** Renders per second at most; default 10 (each costs ≈ 7–14 ms CPU: `noisescope bench dashboard`). */
  readonly maxFps?: number;
  readonly onQuit?: () => void;
  readonly address?: string;
  /** Listen for keys; default true (needs a TTY stdin). */
  readonly keys?: boolean;
  /** A run log played back at this many times its pace (`noisescope replay`). */
  readonly replaySpeed?: number;
  /** Called after each frame Ink writes (benchmarks count them). */
  readonly onFrame?: () => void;
  readonly stdout?: NodeJS.WriteStream;
  readonly stdin?: NodeJS.ReadStream;
}

export function renderDashboard(sources: DashboardSources, options: DashboardOptions = {}): Instance {
  const fps = options.maxFps ?? 10;
  return render(<Dashboard sources={sources} updatesPerSecond={fps} {...(options.onQuit ? { onQuit: options.onQuit } : {})} {...(options.address ? { address: options.address } : {})} {...(options.replaySpeed === undefined ? {} : { replaySpeed: options.replaySpeed })} keys={options.keys ?? true} />, {
    maxFps: fps,
    exitOnCtrlC: false,
    ...(options.onFrame ? { onRender: () => options.onFrame?.() } : {}),
    patchConsole: true,
    ...(options.stdout ? { stdout: options.stdout } : {}),
    ...(options.stdin ? { stdin: options.stdin } : {}),
  });
}
