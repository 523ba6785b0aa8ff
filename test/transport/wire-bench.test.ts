// The wire benchmark delivers what it claims to measure: every byte of 1–4 MiB messages decoded by
// the grpc-js server, over both windows, from both clients. Figures are printed, never asserted.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { startWireBenchServer, type WireBenchServer } from '../../src/bench/wire-bench-service.js';
import { measureNodeClient } from '../../src/bench/wire-client.js';
import type { WireReport } from '../../src/bench/wire-throughput.js';
import { DEFAULT_FLOW_CONTROL_WINDOW } from '../../src/transport/flow-control.js';

// The built CLI, as a user runs it (npm test builds dist/ first).
const CLI = join(import.meta.dirname, '..', '..', 'dist', 'src', 'cli.js');
const MIB = 1024 * 1024;

const servers: WireBenchServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

describe('wire benchmark', () => {
  it('the bench server decodes every byte of 1 and 4 MiB messages with either window', async () => {
    servers.push(await startWireBenchServer(null), await startWireBenchServer(DEFAULT_FLOW_CONTROL_WINDOW));
    const [small, large] = servers.map((s) => s.address) as [string, string];
    // measureNodeClient throws when a server's count of decoded messages or bytes falls short.
    const measurements = await measureNodeClient([small, large], [MIB, 4 * MIB], 8, 1);
    expect(measurements.map((m) => [m.address, m.size, m.messages, m.bytes])).toEqual([
      [small, MIB, 8, 8 * MIB],
      [large, MIB, 8, 8 * MIB],
      [small, 4 * MIB, 2, 8 * MIB],
      [large, 4 * MIB, 2, 8 * MIB],
    ]);
  }, 30_000);

  it('`bench wire --json` reports each client and window for each size, against the Python enlarged-window lane', async () => {
    const args = [CLI, 'bench', 'wire', '--sizes', '1,4', '--mib', '8', '--repeats', '2', '--json'];
    const { stdout } = await promisify(execFile)(process.execPath, args, { timeout: 60_000 });
    const report = JSON.parse(stdout) as WireReport;
    expect(report.window).toBe(DEFAULT_FLOW_CONTROL_WINDOW);
    expect(report.rows.map((r) => `${r.lane} @ ${r.size / MIB}`)).toEqual([
      'python grpcio → grpc-js, 64 KiB window @ 1',
      'python grpcio → grpc-js, 64 KiB window @ 4',
      'python grpcio → grpc-js, 16 MiB window @ 1',
      'python grpcio → grpc-js, 16 MiB window @ 4',
      'node grpc-js → grpc-js, 64 KiB window @ 1',
      'node grpc-js → grpc-js, 64 KiB window @ 4',
      'node grpc-js → grpc-js, 16 MiB window @ 1',
      'node grpc-js → grpc-js, 16 MiB window @ 4',
    ]);
    for (const row of report.rows) {
      expect(row.samples).toHaveLength(2);
      expect(row.mbPerSecond).toBeGreaterThan(0);
      expect(row.serverCpuSecondsPerGB).toBeGreaterThan(0); // the server's own CPU clock reached the client
    }
    expect(report.rows.filter((r) => r.lane.startsWith('python grpcio → grpc-js, 16 MiB')).map((r) => r.ofReference)).toEqual([1, 1]);
    expect(report.alignedCopy.map((c) => c.dtype)).toEqual(['DTYPE_F32', 'DTYPE_F16', 'DTYPE_BF16']);
  }, 90_000);
});
