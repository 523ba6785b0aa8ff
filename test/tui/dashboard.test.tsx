// The dashboard rendered by ink-testing-library from scripted Observables, at 80×24.
import { render } from 'ink-testing-library';
import { BehaviorSubject } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { Dashboard } from '../../tui/dashboard.js';
import type { ConnectionState } from '../../tui/sources.js';
import { estimate, health, layerStats, recommendation, runInfo, scriptedSources, step } from './fixtures.js';

const DOWN = '\u001B[B';
const UP = '\u001B[A';
const mounted: (() => void)[] = [];
afterEach(() => {
  for (const unmount of mounted.splice(0)) unmount();
});

function mount(sources = scriptedSources(), extra: { onQuit?: () => void; columns?: number; address?: string } = {}) {
  const view = render(<Dashboard sources={sources.sources} columns={80} rows={24} updatesPerSecond={50} {...extra} />);
  mounted.push(view.unmount);
  const frame = () => view.lastFrame() ?? '';
  return { ...sources, ...view, frame };
}

/** A steady run: B_simple 128 at a batch of 64, 100 steps, 6 layers. */
function steady(m: ReturnType<typeof mount>) {
  m.runs.next([runInfo()]);
  for (let i = 0; i < 100; i++) m.stats.next(step(i, { smoothed: estimate(128 + (i % 3)) }));
  m.stats.next(step(100, { smoothed: estimate(128) }));
  m.layers.next(layerStats(6, 'mlp', 100));
  m.health.next(health({ stepsCompleted: 101 }));
}

describe('dashboard', () => {
  it('fits 80×24', async () => {
    const m = mount();
    steady(m);
    m.recommendations.next(recommendation());
    await expect.poll(m.frame).toContain('▲ increase');
    const lines = m.frame().split('\n');
    expect(lines.length).toBeLessThan(24);
    for (const line of lines) expect(line.length).toBeLessThanOrEqual(80);
  });

  it('says there is no run yet before any training job attaches', async () => {
    const m = mount();
    await expect.poll(m.frame).toContain('no run yet');
    expect(m.frame()).toContain('no per-layer estimates yet');
    expect(m.frame()).toContain('Recommendation waiting for a training job');
    expect(m.frame()).toContain('ingest: no health report yet');
  });

  it('says where the sidecar listens while it waits, within 80 columns', async () => {
    const m = mount(undefined, { address: 'listening on 127.0.0.1:50051' });
    await expect.poll(m.frame).toContain('no run yet');
    expect(m.frame().split('\n').filter((line) => line.includes('listening on 127.0.0.1:50051'))).toHaveLength(1);
    steady(m);
    await expect.poll(m.frame).not.toContain('no run yet');
  });

  it('shows a steady estimate: B_simple, the chart with the batch, the trade-off and what the batch buys', async () => {
    const m = mount();
    steady(m);
    await expect.poll(m.frame).toContain('step 100');
    const f = m.frame();
    expect(f).toContain('B_simple 128 [102, 166]');
    expect(f).not.toContain('not yet trustworthy');
    expect(f).toMatch(/●{10,}/); // the estimate drawn across the chart
    expect(f).toMatch(/─{10,}/); // the batch line
    expect(f).toContain('─ batch 64');
    expect(f).toContain('steps 32–100, log scale'); // the last chart-width steps
    expect(f).toContain('Trade-off · B_noise≈128');
    // S/S_min = 1 + 128/64 = 3, E/E_min = 1 + 64/128 = 1.5; the knee at 128 costs 2× both.
    expect(f).toMatch(/▶\s+64\s+3\s+1\.5 now/);
    expect(f).toMatch(/128\s+2\s+2 knee/);
    expect(f).toContain('B 64: 33%/step · err 2'); // 1/(1 + 128/64), 128/64
    expect(f).toContain('Scales: accumulation (4 micro-batches × 1 rank, 2 batch scales)');
    expect(f).toContain('101 steps · no losses');
    expect(f).toMatch(/Ingest .* lag \S+/);
    expect(f).toContain('cpu (norms mode)');
  });

  it('warns while warming up: untrusted estimate, unbounded interval', async () => {
    const m = mount();
    m.runs.next([runInfo()]);
    for (let i = 0; i < 5; i++) {
      m.stats.next(step(i, { smoothed: estimate(300, { trusted: false, interval: { low: 40, high: Infinity } }) }));
    }
    await expect.poll(m.frame).toContain('not yet trustworthy');
    expect(m.frame()).toContain('B_simple 300 [40, ∞]');
    expect(m.frame()).toContain('┆ unbounded');
    expect(m.frame()).toContain('● untrusted');
  });

  it('says "no estimate" with the note when there is none', async () => {
    const m = mount();
    m.runs.next([runInfo({ source: 'none' })]);
    m.stats.next(step(0, { source: 'none', microBatches: 1, levels: 1, raw: null, smoothed: null, note: 'one batch scale: use gradient accumulation' }));
    await expect.poll(m.frame).toContain('no estimate: one batch scale: use gradient accumulation');
    expect(m.frame()).toMatch(/Scales: none \(1 micro-batch × 1 rank, 1 batch scale\) — one batch/);
  });

  it('says which share of the parameters the per-example source covers', async () => {
    const m = mount();
    // 97.5% of 40,000 parameters covered, two layers (1,000 parameters) left out.
    const uncoveredLayers = [
      { name: 'attn.in_proj_weight', numel: 600, kind: 'MultiheadAttention' },
      { name: 'pos', numel: 400, kind: 'Parameter' },
    ];
    m.runs.next([runInfo({ source: 'per-example', parameters: 39_000, uncoveredLayers })]);
    m.stats.next(step(0, { source: 'per-example', microBatches: 1, levels: 2 }));
    await expect.poll(m.frame).toContain('Scales: per-example (covers 97% of parameters; 2 layers not covered)');
    m.runs.next([runInfo({ source: 'per-example', parameters: 39_000, uncoveredLayers, perExampleSampled: true })]);
    await expect.poll(m.frame).toContain('Scales: per-example (sampled) (covers 97% of parameters; 2 layers not covered)');
  });

  it('scrolls and sorts many layers', async () => {
    const m = mount();
    steady(m);
    m.layers.next(layerStats(30, 'mlp', 100));
    await expect.poll(m.frame).toContain('1–3 of 30');
    m.stdin.write('l');
    await expect.poll(m.frame).toContain('↑/↓ scroll, s sort');
    // Noisiest first: B_simple = (1 + 7i mod 5)/(0.01(i+1)) is largest for layer00 (100) then layer02 (166.7)…
    const rowsOf = () => [...m.frame().matchAll(/(layer\d\d)\.weight/g)].map((x) => x[1]);
    expect(rowsOf()).toEqual(['layer02', 'layer01', 'layer00']);
    m.stdin.write(DOWN);
    m.stdin.write(DOWN);
    await expect.poll(m.frame).toContain('3–5 of 30');
    expect(rowsOf()[0]).toBe('layer00');
    m.stdin.write(UP);
    await expect.poll(m.frame).toContain('2–4 of 30');
    m.stdin.write('s');
    await expect.poll(m.frame).toContain('Layers · |G|² ↓');
    expect(rowsOf()).toEqual(['layer29', 'layer28', 'layer27']);
    m.stdin.write('s');
    m.stdin.write('s');
    await expect.poll(m.frame).toContain('Layers · name');
    expect(rowsOf()).toEqual(['layer00', 'layer01', 'layer02']);
  });

  it('shows a disconnected rank', async () => {
    const m = mount();
    steady(m);
    m.runs.next([runInfo({ worldSize: 2, ranksConnected: 1 })]);
    await expect.poll(m.frame).toContain('ranks 1/2');
    // What was lost shows up in the ingest line, with rates from the previous sample.
    m.health.next(health({ unixMs: 1_012_000, messages: 700, bytes: 220_000, stepsIncomplete: 3, refused: 2, droppedByHooks: 5 }));
    await expect.poll(m.frame).toContain('3 incomplete · 2 refused · 5 dropped');
    expect(m.frame()).toContain('100 msg/s 50kB/s');
    // A rank declared gone (killed without Goodbye, not back within the partial-step timeout).
    m.health.next(health({ unixMs: 1_013_000, messages: 800, bytes: 230_000, stepsIncomplete: 4, ranksGone: 1 }));
    await expect.poll(m.frame).toContain('4 incomplete · 1 rank gone');
  });

  it('switches between two runs with [ and ]', async () => {
    const m = mount();
    steady(m);
    m.runs.next([runInfo(), runInfo({ run: 'resnet' })]);
    m.stats.next(step(7, { run: 'resnet', globalBatch: 256, smoothed: estimate(900) }));
    await expect.poll(m.frame).toContain('(1/2 [ ])');
    expect(m.frame()).toContain('noisescope mlp');
    m.stdin.write(']');
    await expect.poll(m.frame).toContain('noisescope resnet');
    expect(m.frame()).toContain('B_simple 900');
    expect(m.frame()).toContain('─ batch 256');
    m.stdin.write('[');
    await expect.poll(m.frame).toContain('noisescope mlp');
  });

  it('pauses the display while the streams go on, then catches up', async () => {
    const m = mount();
    steady(m);
    await expect.poll(m.frame).toContain('step 100');
    m.stdin.write('p');
    await expect.poll(m.frame).toContain('PAUSED');
    m.stats.next(step(101, { smoothed: estimate(140) }));
    await new Promise((r) => setTimeout(r, 100));
    expect(m.frame()).toContain('step 100');
    m.stdin.write('p');
    await expect.poll(m.frame).toContain('step 101');
    expect(m.frame()).not.toContain('PAUSED');
  });

  it('r starts the chart anew (a view reset, the estimate is untouched)', async () => {
    const m = mount();
    steady(m);
    await expect.poll(m.frame).toContain('steps 32–100');
    m.stdin.write('r');
    await expect.poll(m.frame).toContain('the chart starts with the first estimated step');
    expect(m.frame()).toContain('B_simple 128');
    m.stats.next(step(101, { smoothed: estimate(128) }));
    await expect.poll(m.frame).toContain('steps 101–101');
  });

  it('toggles help with ?', async () => {
    const m = mount();
    steady(m);
    m.stdin.write('?');
    await expect.poll(m.frame).toContain('pause the display (the sidecar keeps ingesting)');
    // The recommendation panel and the chart's markers are explained, and the help still fits 80×24.
    expect(m.frame()).toContain('Recommendation: ▲ increase / ▼ decrease / ■ hold the global batch');
    expect(m.frame()).toContain('the lr hint is a heuristic');
    expect(m.frame()).toContain('┃ smoothing restarted');
    expect(m.frame()).toContain('╭╯ ╮╰ batch changed');
    expect(m.frame().split('\n').length).toBeLessThan(24);
    for (const line of m.frame().split('\n')) expect([...line].length).toBeLessThanOrEqual(80);
    m.stdin.write('?');
    await expect.poll(m.frame).toContain('Trade-off');
  });

  it('shows a lost connection instead of crashing', async () => {
    const s = scriptedSources();
    const connection = new BehaviorSubject<ConnectionState>({ state: 'connected', address: '127.0.0.1:1' });
    const m = mount({ ...s, sources: { ...s.sources, connection$: connection } });
    steady(m);
    await expect.poll(m.frame).toContain('B_simple 128');
    connection.next({ state: 'lost', address: '127.0.0.1:1', reason: 'No connection established' });
    await expect.poll(m.frame).toContain('connection to 127.0.0.1:1 lost: No connection established');
  });

  it('shows the training job’s last line', async () => {
    const m = mount();
    steady(m);
    m.log.next('train: step 90/100 loss 0.15');
    await expect.poll(m.frame).toContain('│ train: step 90/100 loss 0.15');
  });

  it('q quits', async () => {
    let quit = false;
    const m = mount(undefined, { onQuit: () => (quit = true) });
    await expect.poll(m.frame).toContain('no run yet');
    m.stdin.write('q');
    await expect.poll(() => quit).toBe(true);
  });
});
