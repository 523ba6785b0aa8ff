// Picks the backend by measurement (DESIGN: on CPU-only machines gpu.js's modes were 2–6× slower
// than a plain loop, so nothing is assumed): each candidate must first match the reference on a
// probe, then the fastest Gram throughput wins. The probe is short (a few MiB per candidate).
import { BACKEND_NAMES, createBackend } from './backends.js';
import { fillUniform, gramError } from './probe-data.js';
import type { ReductionBackend } from './reduction-backend.js';
import { createReferenceBackend } from './reference-backend.js';

/** Allowed gramError on the probe: gpu.js sums SPAN float32 products (≤ 256 · 2^-24 ≈ 1.5e-5). */
export const PROBE_TOLERANCE = 2e-5;
const CHECK = { gradients: 3, length: 4099 }; // odd length: exercises every tail path
const TIMED = { gradients: 8, length: 65536 }; // 2 MiB, the shape of a step with 8 gradients
const TIMED_MS = 30;
const TIMED_MAX_CALLS = 16;

export interface Candidate {
  readonly name: string;
  create(): Promise<ReductionBackend>;
}

export type Verdict = 'chosen' | 'correct' | 'wrong' | 'unavailable' | 'duplicate';

export interface CandidateReport {
  readonly name: string;
  readonly verdict: Verdict;
  /** What actually executed (absent when it could not be created). */
  readonly mode?: string;
  /** Probe gramError against the reference. */
  readonly error?: number;
  /** Gram throughput on the probe, GB/s of block read. */
  readonly gramGBps?: number;
  /** Why it was not chosen, when it was not. */
  readonly reason?: string;
}

export interface SelectionReport {
  readonly chosen: string;
  readonly mode: string;
  readonly forced: boolean;
  readonly candidates: readonly CandidateReport[];
  readonly probeMs: number;
}

export interface SelectOptions {
  /** A name from BACKEND_NAMES: measure only it, and use it if it is correct. */
  readonly force?: string;
  /** Defaults to every backend in BACKEND_NAMES. */
  readonly candidates?: readonly Candidate[];
  /** Milliseconds; injectable so tests decide which candidate is "fast". */
  readonly now?: () => number;
}

export const DEFAULT_CANDIDATES: readonly Candidate[] = BACKEND_NAMES.map((name) => ({ name, create: () => createBackend(name) }));

/** The chosen backend (caller disposes it) and how it was chosen. */
export async function selectBackend(options: SelectOptions = {}): Promise<{ backend: ReductionBackend; report: SelectionReport }> {
  const now = options.now ?? (() => performance.now());
  const started = now();
  const all = options.candidates ?? DEFAULT_CANDIDATES;
  const forced = options.force !== undefined;
  const candidates = forced ? all.filter((c) => c.name === options.force) : all;
  if (forced && candidates.length === 0) throw new RangeError(`unknown compute backend '${options.force}': choose one of ${all.map((c) => c.name).join(', ')}`);

  // Created all at once: wasm-simd-threads boots its workers while the candidates before it are measured.
  const creating = candidates.map((c) => Promise.resolve().then(() => c.create()));
  for (const created of creating) created.catch(() => {}); // each is awaited (and its error reported) below
  const expected = await expectedProbe();
  const reports: CandidateReport[] = [];
  const correct: { report: CandidateReport; backend: ReductionBackend }[] = [];
  const executes = new Map<string, string>(); // what runs underneath → first candidate measuring it
  for (const [index, candidate] of candidates.entries()) {
    let backend: ReductionBackend;
    try {
      backend = await (creating[index] as Promise<ReductionBackend>);
    } catch (error) {
      reports.push({ name: candidate.name, verdict: 'unavailable', reason: (error as Error).message ?? String(error) });
      continue;
    }
    const work = sameWork(backend.mode);
    const twin = work === undefined ? undefined : executes.get(work);
    if (twin !== undefined && !forced) {
      reports.push({ name: candidate.name, verdict: 'duplicate', mode: backend.mode, reason: `runs the same code as ${twin}` });
      backend.dispose();
      continue;
    }
    if (work !== undefined) executes.set(work, candidate.name);
    const error = await probeError(backend, expected).catch(() => Infinity);
    if (!(error <= PROBE_TOLERANCE)) {
      reports.push({ name: candidate.name, verdict: 'wrong', mode: backend.mode, error, reason: `probe error ${error.toExponential(2)} > ${PROBE_TOLERANCE}` });
      backend.dispose();
      continue;
    }
    const report: CandidateReport = { name: candidate.name, verdict: 'correct', mode: backend.mode, error, gramGBps: await gramThroughput(backend, now) };
    reports.push(report);
    correct.push({ report, backend });
  }

  const best = fastest(correct.map((c) => c.report));
  if (best === undefined) {
    const why = reports.map((r) => `${r.name}: ${r.reason ?? r.verdict}`).join('; ');
    throw new Error(forced ? `compute backend '${options.force}' cannot be used: ${why}` : `no compute backend passed the probe: ${why}`);
  }
  const chosen = correct.find((c) => c.report === best) as { backend: ReductionBackend };
  for (const c of correct) if (c.backend !== chosen.backend) c.backend.dispose();
  const final = reports.map((r): CandidateReport => {
    if (r === best) return { ...r, verdict: 'chosen' };
    if (r.verdict === 'correct') return { ...r, reason: `slower: ${formatGBps(r.gramGBps)} vs ${formatGBps(best.gramGBps)} GB/s` };
    return r;
  });
  return {
    backend: chosen.backend,
    report: { chosen: best.name, mode: chosen.backend.mode, forced, candidates: final, probeMs: now() - started },
  };
}

/** The correct candidate with the highest Gram throughput (the first on a tie). */
export function fastest(reports: readonly CandidateReport[]): CandidateReport | undefined {
  let best: CandidateReport | undefined;
  for (const r of reports) if (r.verdict === 'correct' && (best === undefined || (r.gramGBps ?? 0) > (best.gramGBps ?? 0))) best = r;
  return best;
}

/** One line per candidate, for the CLI and logs. */
export function formatSelection(report: SelectionReport): string {
  const lines = [`compute backend: ${report.chosen} (${report.mode})${report.forced ? ', forced' : ''}; probe ${report.probeMs.toFixed(0)} ms`];
  for (const r of report.candidates) {
    const speed = r.gramGBps === undefined ? '' : ` ${formatGBps(r.gramGBps)} GB/s`;
    lines.push(`  ${r.name.padEnd(17)} ${r.verdict.padEnd(11)}${speed}${r.reason ? `  ${r.reason}` : ''}`);
  }
  return lines.join('\n');
}

const formatGBps = (v: number | undefined): string => (v === undefined ? '?' : v.toFixed(2));

/** gpu.js's gpu mode that fell back to webasm runs exactly what webasm mode runs; async adds threads. */
function sameWork(mode: string): string | undefined {
  if (!mode.startsWith('gpu.js ')) return undefined;
  return mode.replace(/^gpu\.js (\w+) mode/, (_, m: string) => (m === 'async' ? 'async' : 'sync'));
}

interface Expected {
  readonly gram: Float64Array;
  readonly sumOfSquares: number;
}

function probeValues(): Float32Array {
  return fillUniform(new Float32Array(CHECK.gradients * CHECK.length), 6);
}

async function expectedProbe(): Promise<Expected> {
  const reference = createReferenceBackend();
  const values = probeValues();
  const gram = new Float64Array(CHECK.gradients ** 2);
  await reference.addGram({ ...CHECK, values }, gram);
  return { gram, sumOfSquares: await reference.sumOfSquares(values) };
}

/** Worst of the Gram error and the sum-of-squares relative error on the probe block. */
async function probeError(backend: ReductionBackend, expected: Expected): Promise<number> {
  const block = backend.allocateBlock(CHECK.gradients, CHECK.length);
  try {
    block.values.set(probeValues());
    const gram = new Float64Array(CHECK.gradients ** 2);
    await backend.addGram(block, gram);
    const squares = await backend.sumOfSquares(block.values);
    const squaresError = Math.abs(squares - expected.sumOfSquares) / expected.sumOfSquares;
    return Math.max(gramError(gram, expected.gram, CHECK.gradients), Number.isNaN(squaresError) ? Infinity : squaresError);
  } finally {
    block.release();
  }
}

/** GB/s of block read by addGram, from its fastest call: one untimed call, then calls for ≥ TIMED_MS
 *  (at most TIMED_MAX_CALLS). The fastest, not the mean: the engine optimises WebAssembly in the
 *  background after the first calls (V8 starts it on its baseline compiler, several times slower),
 *  and on a shared machine other processes only ever slow a call down. */
async function gramThroughput(backend: ReductionBackend, now: () => number): Promise<number> {
  const block = backend.allocateBlock(TIMED.gradients, TIMED.length);
  try {
    fillUniform(block.values, 7);
    const gram = new Float64Array(TIMED.gradients ** 2);
    await backend.addGram(block, gram);
    let fastestMs = Infinity;
    const start = now();
    for (let calls = 0; calls < TIMED_MAX_CALLS && (calls === 0 || now() - start < TIMED_MS); calls++) {
      const before = now();
      await backend.addGram(block, gram);
      fastestMs = Math.min(fastestMs, now() - before);
    }
    return (TIMED.gradients * TIMED.length * 4) / (fastestMs * 1e6);
  } finally {
    block.release();
  }
}
