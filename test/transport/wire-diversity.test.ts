// Rank agreement (GradientDiversity.acrossRanks) over the wire: a data-parallel dense run of 3 real rank streams,
// one of them sending noise, watched by watchSidecar. The remote StepStats equal the sidecar's own, and the rank
// cosines and mean cosines equal those worked out here in float64 from the gradients sent.
import { filter, firstValueFrom, take, toArray } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { rankDisagreements, startSidecar, watchSidecar, type RemoteSidecar, type Sidecar, type StepStats } from '../../src/index.js';
import { microGradients, seeded } from '../support/dense-gradients.js';
import { connect, denseStep, hello, LAYERS, RankStream } from '../support/rank-client.js';

const SIZES = LAYERS.map((l) => l.numel);
const K = 2;
const WORLD = 3;
const STEPS = 3;
const NOISY = 1;

/** gradients[rank][j][layer]: shared signal plus noise; rank NOISY's are noise alone. */
function stepGradients(step: number): Float32Array[][][] {
  const all = microGradients(step + 11, WORLD * K, SIZES, { signal: 1, noise: 0.5 });
  const noise = seeded(step + 91);
  return Array.from({ length: WORLD }, (_, r) =>
    all.slice(r * K, (r + 1) * K).map((layers) => (r === NOISY ? layers.map((v) => v.map(() => 20 * (2 * noise() - 1))) : layers)),
  );
}

/** The whole model's gradient as one float64 vector (layers concatenated). */
const flat = (layers: readonly Float32Array[]) => Float64Array.from(layers.flatMap((v) => [...v]));
const dot = (a: Float64Array, b: Float64Array) => a.reduce((s, x, i) => s + x * (b[i] as number), 0);
const cos = (a: Float64Array, b: Float64Array) => dot(a, b) / Math.sqrt(dot(a, a) * dot(b, b));

/** Ground truth for rank r: cosines of its accumulated gradient with each rank's, and its micro-batches' mean cosine to the other ranks'. */
function agreementByHand(gradients: Float32Array[][][], r: number): { cosines: number[]; meanCosine: number } {
  const micro = gradients.map((rank) => rank.map(flat));
  const accumulated = micro.map((rank) => rank.reduce((sum, g) => sum.map((x, i) => x + (g[i] as number))));
  const across: number[] = [];
  micro.forEach((rank, s) => {
    if (s !== r) for (const g of rank) for (const h of micro[r]!) across.push(cos(h, g));
  });
  return { cosines: accumulated.map((g) => cos(accumulated[r]!, g)), meanCosine: across.reduce((a, b) => a + b, 0) / across.length };
}

let sidecar: Sidecar | null = null;
let remote: RemoteSidecar | null = null;
const clients: { close(): void }[] = [];
afterEach(async () => {
  remote?.close();
  for (const c of clients.splice(0)) c.close();
  await sidecar?.close();
  [sidecar, remote] = [null, null];
});

describe('rank agreement on the wire', () => {
  it('reaches a Watch client as the sidecar published it, equal to the cosines of the gradients sent', async () => {
    sidecar = await startSidecar({ port: 0, healthIntervalMs: 50 });
    remote = watchSidecar(sidecar.address);
    await firstValueFrom(remote.connection$.pipe(filter((c) => c.state === 'connected')));
    const take3 = (stats$: Sidecar['stats$']) => firstValueFrom(stats$.pipe(filter((s: StepStats) => s.run === 'dp'), take(STEPS), toArray()));
    const [local, far] = [take3(sidecar.stats$), take3(remote.stats$)];

    const client = connect(sidecar.address);
    clients.push(client);
    const ranks = Array.from({ length: WORLD }, (_, rank) => {
      const s = new RankStream(client);
      s.send(hello({ run: 'dp', rank, worldSize: WORLD, mode: 'MODE_DENSE' }));
      return s;
    });
    const sent = Array.from({ length: STEPS }, (_, step) => stepGradients(step));
    sent.forEach((gradients, step) => ranks.forEach((s, r) => denseStep(step, gradients[r]!).forEach((m) => s.send(m))));

    const [mine, theirs] = [await local, await far];
    for (const s of ranks) expect(s.refusals()).toEqual([]);
    expect(theirs).toEqual(mine);
    theirs.forEach((stats, step) => {
      expect(stats.diversity?.map((d) => d.rank)).toEqual([0, 1, 2]);
      for (const d of stats.diversity!) {
        const truth = agreementByHand(sent[step]!, d.rank);
        expect(d.acrossRanks!.cosines.length).toBe(WORLD);
        d.acrossRanks!.cosines.forEach((c, s) => expect(c).toBeCloseTo(truth.cosines[s]!, 9));
        expect(d.acrossRanks!.meanCosine).toBeCloseTo(truth.meanCosine, 9);
        expect(d.acrossRanks!.disagrees).toBe(d.rank === NOISY);
      }
      expect(rankDisagreements(stats.diversity)).toEqual([`rank ${NOISY} disagrees (cos ${stats.diversity![NOISY]!.acrossRanks!.meanCosine.toFixed(2)})`]);
    });
    for (const s of ranks) s.end();
  });
});
