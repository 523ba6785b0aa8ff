// The diversity line, from diversity the sidecar's own code computes (gradientDiversity over Gram
// matrices the reference backend builds from explicit gradients), checked against cosines worked
// out here directly from those gradients; rendered by ink-testing-library at 80×24 and narrower.
import { render } from 'ink-testing-library';
import { afterEach, describe, expect, it } from 'vitest';
import { fillUniform } from '../../src/compute/probe-data.js';
import { createReferenceBackend } from '../../src/compute/reference-backend.js';
import { gradientDiversity } from '../../src/stats/gradient-diversity.js';
import type { GradientDiversity } from '../../src/types.js';
import { Dashboard } from '../../tui/dashboard.js';
import { cosine, diversitySpans, summarizeDiversity } from '../../tui/diversity.js';
import { fitSpans, plain } from '../../tui/fit.js';
import { health, layerStats, runInfo, scriptedSources, step } from './fixtures.js';

const N = 256;

/** K gradients of N elements, shared direction + noise; those in `against` point the other way. */
function gradients(k: number, seed: number, against: readonly number[] = [], noise = 0.5): Float32Array {
  const shared = fillUniform(new Float32Array(N), seed);
  const values = new Float32Array(k * N);
  for (let i = 0; i < k; i++) {
    const own = fillUniform(new Float32Array(N), seed * 100 + i + 1);
    const sign = against.includes(i) ? -1 : 1;
    for (let e = 0; e < N; e++) values[i * N + e] = sign * (shared[e] as number) + noise * (own[e] as number);
  }
  return values;
}

/** Two layers (the first 100 elements, the rest), as the sidecar sums them. */
async function diversityOf(rank: number, values: Float32Array, k: number): Promise<GradientDiversity> {
  const reference = createReferenceBackend();
  const grams: Float64Array[] = [];
  for (const [start, end] of [[0, 100], [100, N]] as const) {
    const layer = new Float32Array(k * (end - start));
    for (let i = 0; i < k; i++) layer.set(values.subarray(i * N + start, i * N + end), i * (end - start));
    const gram = new Float64Array(k * k);
    await reference.addGram({ gradients: k, length: end - start, values: layer }, gram);
    grams.push(gram);
  }
  return gradientDiversity(rank, grams, k);
}

/** Pairwise cosines (a < b) straight from the gradients. */
function cosinesByHand(values: Float32Array, k: number): { a: number; b: number; cos: number }[] {
  const dot = (a: number, b: number) => {
    let s = 0;
    for (let e = 0; e < N; e++) s += (values[a * N + e] as number) * (values[b * N + e] as number);
    return s;
  };
  const out: { a: number; b: number; cos: number }[] = [];
  for (let a = 0; a < k; a++) for (let b = a + 1; b < k; b++) out.push({ a, b, cos: dot(a, b) / Math.sqrt(dot(a, a) * dot(b, b)) });
  return out;
}

describe('diversity summary', () => {
  it('mean and least pairwise cosine match the gradients; the one pointing the other way is named', async () => {
    const values = gradients(4, 3, [2]);
    const summary = summarizeDiversity([await diversityOf(0, values, 4)]);
    const byHand = cosinesByHand(values, 4);
    const least = byHand.reduce((m, p) => (p.cos < m.cos ? p : m));
    expect(summary?.pairs).toBe(6);
    expect(summary?.meanCosine).toBeCloseTo(byHand.reduce((s, p) => s + p.cos, 0) / 6, 12);
    expect(summary?.minCosine).toBeCloseTo(least.cos, 12);
    expect(summary?.minPair?.map((g) => g.microBatch)).toEqual([least.a, least.b]);
    expect(least.cos).toBeLessThan(-0.5); // the flipped one is in the least alike pair
    expect(summary?.disagreeing.map((d) => [d.rank, d.microBatch])).toEqual([[0, 2]]);
  });

  it('is null without diversity (norms steps) and says so when no pair exists', async () => {
    expect(summarizeDiversity(undefined)).toBeNull();
    expect(summarizeDiversity([])).toBeNull();
    const single = summarizeDiversity([await diversityOf(0, gradients(1, 4), 1)]);
    expect(single).toMatchObject({ pairs: 0, meanCosine: null, disagreeing: [] });
    expect(plain(fitSpans(diversitySpans(single!), 80))).toBe('Diversity no pairs to compare (one micro-batch per rank)');
  });

  it('keeps the flag when the line must shrink', async () => {
    const summary = summarizeDiversity([await diversityOf(0, gradients(4, 3), 4), await diversityOf(1, gradients(4, 5, [3]), 4)])!;
    const wide = plain(fitSpans(diversitySpans(summary), 200));
    expect(wide).toMatch(/^Diversity cos mean [\d.]+ min −?[\d.]+ \(r1 mb\d·mb3\) over 4 micro-batches × 2 ranks ⚠ rank 1 micro-batch 3 disagrees \(cos −?[\d.]+ to the rest\)$/);
    for (const width of [60, 40, 30]) expect(plain(fitSpans(diversitySpans(summary), width)), `width ${width}`).toMatch(/⚠ r(ank )?1 m(icro-batch|b) ?3 disagrees/);
  });

  it('formats cosines with a true minus sign and no negative zero', () => {
    expect([cosine(-0.456), cosine(-0.001), cosine(0.5), cosine(Number.NaN), cosine(null)]).toEqual(['−0.46', '0.00', '0.50', '–', '–']);
  });
});

const mounted: (() => void)[] = [];
afterEach(() => {
  for (const unmount of mounted.splice(0)) unmount();
});

function mount(columns: number) {
  const sources = scriptedSources();
  const view = render(<Dashboard sources={sources.sources} columns={columns} rows={24} updatesPerSecond={50} />);
  mounted.push(view.unmount);
  return { ...sources, frame: () => view.lastFrame() ?? '' };
}

function expectFits(frame: string, columns: number) {
  const lines = frame.split('\n');
  expect(lines.length).toBeLessThanOrEqual(24);
  for (const line of lines) expect([...line].length).toBeLessThanOrEqual(columns);
}

describe('the dashboard’s diversity line', () => {
  it('shows a dense run’s mean / least cosine and the disagreeing micro-batch, in 80×24', async () => {
    const values = gradients(4, 3, [2]);
    const diversity = [await diversityOf(0, values, 4)];
    const byHand = cosinesByHand(values, 4);
    const m = mount(80);
    m.runs.next([runInfo({ mode: 'dense' })]);
    for (let i = 0; i < 20; i++) m.stats.next(step(i, { diversity }));
    m.layers.next(layerStats(4, 'mlp', 19));
    m.health.next(health({ stepsCompleted: 20 }));
    const mean = cosine(byHand.reduce((s, p) => s + p.cos, 0) / byHand.length);
    const least = cosine(Math.min(...byHand.map((p) => p.cos)));
    await expect.poll(m.frame).toContain(`Diversity cos mean ${mean} min ${least}`);
    expect(m.frame()).toMatch(/⚠ (micro-batch 2 disagrees|mb2 disagrees)/);
    expect(m.frame()).toContain('Scales: accumulation'); // the line below it is still there
    expect(m.frame()).toContain('Ingest');
    expectFits(m.frame(), 80);
  });

  it('names the rank too when the step has several, and stays within 60 columns', async () => {
    const diversity = [await diversityOf(0, gradients(4, 3), 4), await diversityOf(1, gradients(4, 5, [3]), 4)];
    const m = mount(60);
    m.runs.next([runInfo({ mode: 'dense', worldSize: 2 })]);
    for (let i = 0; i < 20; i++) m.stats.next(step(i, { ranks: 2, diversity }));
    m.health.next(health({ stepsCompleted: 20 }));
    await expect.poll(m.frame).toMatch(/⚠ r(ank )?1 m(icro-batch |b)3 disagrees/);
    expect(m.frame()).not.toMatch(/rank 0 .*disagrees|r0 mb\d disagrees/);
    expectFits(m.frame(), 60);
  });

  it('is absent in norms mode, and the chart keeps that line', async () => {
    const m = mount(80);
    m.runs.next([runInfo()]);
    for (let i = 0; i < 20; i++) m.stats.next(step(i));
    m.health.next(health({ stepsCompleted: 20 }));
    await expect.poll(m.frame).toContain('Ingest');
    expect(m.frame()).not.toContain('Diversity');
    const normsLines = m.frame().split('\n').length;
    const dense = mount(80);
    dense.runs.next([runInfo({ mode: 'dense' })]);
    const diversity = [await diversityOf(0, gradients(4, 3), 4)];
    for (let i = 0; i < 20; i++) dense.stats.next(step(i, { diversity }));
    dense.health.next(health({ stepsCompleted: 20 }));
    await expect.poll(dense.frame).toContain('Diversity');
    expect(dense.frame()).toContain('none disagrees');
    expect(dense.frame().split('\n').length).toBe(normsLines); // the chart gave the line up
  });
});
