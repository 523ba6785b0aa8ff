// Benchmark: raw gRPC loopback throughput into the grpc-js server for 1–4 MiB messages, with
// Node's default 64 KiB HTTP/2 receive window and with the sidecar's enlarged one, measured in the
// same run, from a Python grpcio client (the hook's library) and from a Node grpc-js client.
//
// Lanes are rows keyed by name; every row is also given as a fraction of the Python client's
// enlarged-window figure for the same message size, the reference the dense-ingest target
// (≥ 70 %, DESIGN.md) is stated against, so a "python hook → sidecar → Gram" lane fits beside them.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { AlignedPayloads, type WireDtype } from '../transport/aligned-copy.js';
import { DEFAULT_FLOW_CONTROL_WINDOW } from '../transport/flow-control.js';
import { protoRoot } from '../transport/proto.js';
import { startWireBenchServer, type WireBenchServer } from './wire-bench-service.js';
import type { WireMeasurement } from './wire-client.js';

const MIB = 1024 * 1024;

export interface WireBenchOptions {
  /** Message payload sizes in bytes. */
  readonly sizes: readonly number[];
  /** MiB sent per measurement. */
  readonly mib: number;
  readonly repeats: number;
  readonly clients: readonly WireClient[];
}

export type WireClient = 'python' | 'node';

export const DEFAULT_WIRE_BENCH: WireBenchOptions = { sizes: [1 * MIB, 2 * MIB, 4 * MIB], mib: 256, repeats: 5, clients: ['python', 'node'] };

export interface WireRow {
  readonly lane: string;
  readonly size: number;
  /** Median over repeats, 10^6 bytes per second. */
  readonly mbPerSecond: number;
  readonly samples: readonly number[];
  /** Median server-process CPU seconds per 10^9 bytes received: less sensitive to a busy machine than MB/s. */
  readonly serverCpuSecondsPerGB: number;
  /** This row over the Python client's enlarged-window figure for the same size. */
  readonly ofReference: number;
}

export interface AlignedCopyRow {
  readonly dtype: WireDtype;
  readonly payloadBytes: number;
  /** Payload bytes read per second (10^9), median of repeats. */
  readonly gbPerSecond: number;
}

export interface WireReport {
  readonly options: WireBenchOptions;
  readonly window: number;
  readonly rows: readonly WireRow[];
  readonly alignedCopy: readonly AlignedCopyRow[];
}

const REFERENCE_LANE = laneName('python', DEFAULT_FLOW_CONTROL_WINDOW);

function laneName(client: WireClient, window: number | null): string {
  const source = client === 'python' ? 'python grpcio' : 'node grpc-js';
  return `${source} → grpc-js, ${window === null ? '64 KiB' : `${window / MIB} MiB`} window`;
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

/** The project root (above proto/): where the Python client and the venv live. */
function projectRoot(): string {
  return dirname(protoRoot());
}

function clientCommand(client: WireClient): [string, string[]] {
  if (client === 'node') return [process.execPath, [fileURLToPath(new URL('./wire-client.js', import.meta.url))]];
  const script = join(projectRoot(), 'test', 'python', 'bench_wire.py');
  if (!existsSync(script)) throw new Error(`bench wire needs the source checkout: ${script} is missing`);
  const venv = join(projectRoot(), '.venv', 'bin', 'python');
  return [existsSync(venv) ? venv : 'python3', [script]];
}

/** Runs one client process against every server (interleaved per repeat); resolves with its measurement lines. */
async function runClient(client: WireClient, servers: readonly WireBenchServer[], options: WireBenchOptions): Promise<WireMeasurement[]> {
  const [command, prefix] = clientCommand(client);
  const addresses = servers.map((s) => s.address).join(',');
  const args = [...prefix, '--addresses', addresses, '--sizes', options.sizes.join(','), '--mib', String(options.mib), '--repeats', String(options.repeats)];
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const measurements: WireMeasurement[] = [];
  createInterface({ input: child.stdout }).on('line', (line) => measurements.push(JSON.parse(line) as WireMeasurement));
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const code = await new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', resolve);
  });
  if (code !== 0) throw new Error(`${client} wire client exited with ${code}: ${stderr.trim()}`);
  return measurements;
}

/** AlignedPayloads on a payload at the odd offset grpc-js hands out: what each chunk costs before reduction. */
export function measureAlignedCopy(payloadBytes = 4 * MIB, repeats = 50): AlignedCopyRow[] {
  const frame = Buffer.alloc(payloadBytes + 9, 0x3c);
  const payload = frame.subarray(9);
  const payloads = new AlignedPayloads();
  return (['DTYPE_F32', 'DTYPE_F16', 'DTYPE_BF16'] as const).map((dtype) => {
    payloads.toFloat32(payload, dtype); // warm: buffers sized, code compiled
    const rates = Array.from({ length: repeats }, () => {
      const start = process.hrtime.bigint();
      payloads.toFloat32(payload, dtype);
      return payloadBytes / Number(process.hrtime.bigint() - start);
    });
    return { dtype, payloadBytes, gbPerSecond: median(rates) };
  });
}

export async function runWireThroughput(options: WireBenchOptions = DEFAULT_WIRE_BENCH): Promise<WireReport> {
  const servers = [await startWireBenchServer(null), await startWireBenchServer(DEFAULT_FLOW_CONTROL_WINDOW)];
  const raw: { lane: string; size: number; mbPerSecond: number; cpuPerGB: number }[] = [];
  try {
    const windows = new Map(servers.map((s) => [s.address, s.window]));
    for (const client of options.clients) {
      for (const m of await runClient(client, servers, options)) {
        raw.push({
          lane: laneName(client, windows.get(m.address) ?? null),
          size: m.size,
          mbPerSecond: m.bytes / m.seconds / 1e6,
          cpuPerGB: m.serverCpuSeconds / (m.bytes / 1e9),
        });
      }
    }
  } finally {
    await Promise.all(servers.map((s) => s.close()));
  }
  const lanes = [...new Set(raw.map((r) => r.lane))];
  const rows = lanes.flatMap((lane) =>
    options.sizes.map((size) => {
      const measured = raw.filter((r) => r.lane === lane && r.size === size);
      const samples = measured.map((r) => r.mbPerSecond);
      return { lane, size, mbPerSecond: median(samples), samples, serverCpuSecondsPerGB: median(measured.map((r) => r.cpuPerGB)) };
    }),
  );
  const reference = (size: number) => rows.find((r) => r.lane === REFERENCE_LANE && r.size === size)?.mbPerSecond ?? Number.NaN;
  const withReference: WireRow[] = rows.map((row) => ({ ...row, ofReference: row.mbPerSecond / reference(row.size) }));
  return { options, window: DEFAULT_FLOW_CONTROL_WINDOW, rows: withReference, alignedCopy: measureAlignedCopy() };
}

export function formatWireReport(report: WireReport): string {
  const { options } = report;
  const lines = [
    `wire throughput, loopback into grpc-js (MB/s = 10^6 B/s; median of ${options.repeats} × ${options.mib} MiB per lane and size)`,
    `${'lane'.padEnd(48)}${'message'.padStart(9)}${'MB/s'.padStart(9)}${'min–max'.padStart(13)}${'of ref.'.padStart(9)}${'srv CPU s/GB'.padStart(14)}`,
  ];
  for (const row of report.rows) {
    const ratio = Number.isFinite(row.ofReference) ? `${Math.round(row.ofReference * 100)}%` : '–';
    const range = `${Math.min(...row.samples).toFixed(0)}–${Math.max(...row.samples).toFixed(0)}`;
    lines.push(`${row.lane.padEnd(48)}${`${row.size / MIB} MiB`.padStart(9)}${row.mbPerSecond.toFixed(0).padStart(9)}${range.padStart(13)}${ratio.padStart(9)}${row.serverCpuSecondsPerGB.toFixed(2).padStart(14)}`);
  }
  lines.push(`ref. = ${REFERENCE_LANE}, same message size`);
  lines.push(`payload → aligned float32 (${(report.alignedCopy[0]?.payloadBytes ?? 0) / MIB} MiB at byte offset 9):`);
  for (const copy of report.alignedCopy) lines.push(`  ${copy.dtype.padEnd(11)} ${copy.gbPerSecond.toFixed(1)} GB/s of payload`);
  return lines.join('\n');
}
