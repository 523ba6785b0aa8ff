// serve's resource-limit flags → startSidecar({ limits }). Only the limits a user may outgrow
// have flags (the error each limit causes names its flag); the rest are options only.
import { DEFAULT_LIMITS, type SidecarLimits } from '../transport/limits.js';
import { UsageError } from './flags.js';

export const LIMIT_FLAGS = {
  'max-message-mb': { type: 'string' },
  'max-runs': { type: 'string' },
  'max-layers': { type: 'string' },
} as const;

export const LIMIT_USAGE = `    limits (each error a limit causes names it):
      [--max-message-mb N]  largest gRPC message, MiB (default ${DEFAULT_LIMITS.maxMessageBytes / 2 ** 20})
      [--max-runs N]        runs held at once; an ended run makes room (default ${DEFAULT_LIMITS.runs})
      [--max-layers N]      layers one run may declare (default ${DEFAULT_LIMITS.layersPerRun})`;

type LimitFlagValues = { readonly [K in keyof typeof LIMIT_FLAGS]?: string };

function whole(value: string, flag: string, max: number): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isInteger(n) || n < 1 || n > max) throw new UsageError(`--${flag} must be a whole number in 1..${max}, got '${value}'`);
  return n;
}

/** Only the flags given; the rest keep DEFAULT_LIMITS. */
export function limitsFromFlags(values: LimitFlagValues): Partial<SidecarLimits> {
  const limits: { -readonly [K in keyof SidecarLimits]?: number } = {};
  const mb = values['max-message-mb'];
  if (mb !== undefined) limits.maxMessageBytes = whole(mb, 'max-message-mb', 2047) * 2 ** 20;
  if (values['max-runs'] !== undefined) limits.runs = whole(values['max-runs'], 'max-runs', 1_000_000);
  if (values['max-layers'] !== undefined) limits.layersPerRun = whole(values['max-layers'], 'max-layers', 100_000_000);
  return limits;
}
