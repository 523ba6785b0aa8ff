// `noisescope bench wire [--sizes 1,2,4] [--mib 256] [--repeats 5] [--clients python,node] [--json]`
import { parseArgs } from 'node:util';
import { UsageError } from '../cli/flags.js';
import { DEFAULT_WIRE_BENCH, formatWireReport, runWireThroughput, type WireClient } from './wire-throughput.js';

const MIB = 1024 * 1024;
const CLIENTS: readonly WireClient[] = ['python', 'node'];

function positiveNumbers(flag: string, text: string): number[] {
  const values = text.split(',').map(Number);
  if (values.some((v) => !Number.isFinite(v) || v <= 0)) throw new UsageError(`--${flag} takes positive numbers, got '${text}'`);
  return values;
}

/** Runs the wire benchmark from command-line flags; returns what to print. */
export async function runWireBenchCommand(args: string[]): Promise<string> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      sizes: { type: 'string' },
      mib: { type: 'string' },
      repeats: { type: 'string' },
      clients: { type: 'string' },
      json: { type: 'boolean', default: false },
    },
  });
  const clients = (values.clients?.split(',') ?? [...DEFAULT_WIRE_BENCH.clients]) as WireClient[];
  const unknown = clients.find((c) => !CLIENTS.includes(c));
  if (unknown !== undefined) throw new UsageError(`--clients takes ${CLIENTS.join(', ')}; got '${unknown}'`);
  const repeats = values.repeats === undefined ? DEFAULT_WIRE_BENCH.repeats : positiveNumbers('repeats', values.repeats)[0]!;
  if (!Number.isInteger(repeats)) throw new UsageError(`--repeats takes a whole number, got '${values.repeats}'`);
  const report = await runWireThroughput({
    sizes: values.sizes === undefined ? DEFAULT_WIRE_BENCH.sizes : positiveNumbers('sizes', values.sizes).map((s) => Math.round(s * MIB)),
    mib: values.mib === undefined ? DEFAULT_WIRE_BENCH.mib : positiveNumbers('mib', values.mib)[0]!,
    repeats,
    clients,
  });
  return values.json ? JSON.stringify(report) : formatWireReport(report);
}
