// The fused multiply-add kernels (relaxed SIMD) run where the runtime has them: Node ≥ 22, or Node 20
// with --experimental-wasm-relaxed-simd, as here in a child process on the built code. The product
// of two float32 values is exact in float64, so fused or not each sum is rounded once and the Gram
// must be bit-identical to the multiply-then-add kernels' (and match the reference to 1e-12).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';

const BACKEND = join(import.meta.dirname, '..', '..', 'dist', 'src', 'compute', 'wasm-simd-backend.js');

const CHECK = `
import { createWasmSimdBackend } from ${JSON.stringify(BACKEND)};
import { createReferenceBackend } from ${JSON.stringify(BACKEND.replace('wasm-simd-backend', 'reference-backend'))};
import { fillUniform, gramError } from ${JSON.stringify(BACKEND.replace('wasm-simd-backend', 'probe-data'))};
const [fused, plain, reference] = [createWasmSimdBackend(), createWasmSimdBackend({ fused: false }), createReferenceBackend()];
const cases = [];
for (const [k, n] of [[1, 3], [2, 4099], [3, 17], [5, 1025], [8, 40000], [9, 4096], [16, 3001]]) {
  const values = fillUniform(new Float32Array(k * n), k * 31 + n);
  const block = fused.allocateBlock(k, n);
  block.values.set(values);
  const grams = [new Float64Array(k * k), new Float64Array(k * k), new Float64Array(k * k)];
  await fused.addGram(block, grams[0]);
  await plain.addGram({ gradients: k, length: n, values }, grams[1]);
  await reference.addGram({ gradients: k, length: n, values }, grams[2]);
  block.release();
  cases.push({ k, n, identical: grams[0].every((g, q) => Object.is(g, grams[1][q])), error: gramError(grams[0], grams[2], k) });
}
console.log(JSON.stringify({ modes: [fused.mode, plain.mode], cases }));
`;

it('fused multiply-add gives the same Gram, bit for bit, as multiply then add', () => {
  expect(existsSync(BACKEND), `${BACKEND} is missing: run \`npm run build\``).toBe(true);
  const child = spawnSync(process.execPath, ['--experimental-wasm-relaxed-simd', '--input-type=module', '-e', CHECK], { encoding: 'utf8', timeout: 60_000 });
  expect(child.status, child.stderr).toBe(0);
  const { modes, cases } = JSON.parse(child.stdout) as { modes: string[]; cases: { k: number; n: number; identical: boolean; error: number }[] };
  expect(modes[0]).toMatch(/fused multiply-add \(relaxed SIMD\)$/);
  expect(modes[1]).toMatch(/multiply then add$/);
  for (const c of cases) {
    expect(c.identical, `K=${c.k} n=${c.n}`).toBe(true);
    expect(c.error, `K=${c.k} n=${c.n}`).toBeLessThanOrEqual(1e-12);
  }
});
