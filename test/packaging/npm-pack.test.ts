// The npm package as a user gets it: `npm pack` of this checkout (dist/ built by npm test),
// installed from the tarball into a fresh directory, then its CLI run through npx and both
// typed ESM entry points (`noisescope`, `noisescope/tui`) imported and type-checked there.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..', '..');
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm';
let dir = '';
let app = '';
let packed: { filename: string; files: { path: string }[] };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'noisescope-pack-'));
  app = join(dir, 'app');
  [packed] = JSON.parse(execFileSync(NPM, ['pack', '--json', '--pack-destination', dir], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })) as (typeof packed)[];
  execFileSync('mkdir', [app]);
  await writeFile(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  // --prefer-offline: the dependencies come from npm's cache when it has them, the registry otherwise.
  execFileSync(NPM, ['install', join(dir, packed.filename), '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error'], { cwd: app, stdio: ['ignore', 'pipe', 'pipe'], timeout: 150_000 });
}, 180_000);
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('the packed npm package', () => {
  it('declares both entry points with their types in package.json "exports"', async () => {
    const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { exports: Record<string, unknown>; bin: Record<string, string> };
    expect(pkg.exports['.'], 'package.json exports "."').toEqual({ types: './dist/src/index.d.ts', default: './dist/src/index.js' });
    expect(pkg.exports['./tui'], 'package.json must export "./tui": { "types": "./dist/tui/index.d.ts", "default": "./dist/tui/index.js" }').toEqual({
      types: './dist/tui/index.d.ts',
      default: './dist/tui/index.js',
    });
    expect(pkg.bin).toEqual({ noisescope: 'dist/src/cli.js' });
  });

  it('ships the built entry points, their declarations and the proto, and no sources or tests', () => {
    const files = packed.files.map((f) => f.path);
    for (const file of ['dist/src/index.js', 'dist/src/index.d.ts', 'dist/src/cli.js', 'dist/tui/index.js', 'dist/tui/index.d.ts', 'proto/noisescope/v1/noisescope.proto', 'package.json', 'README.md']) {
      expect(files, file).toContain(file);
    }
    expect(files.filter((f) => /^(src|tui|test|python-shim)\//.test(f) || f.endsWith('.ts') && !f.endsWith('.d.ts'))).toEqual([]);
  });

  it('runs `npx noisescope --help` from the installed tarball', () => {
    const help = spawnSync('npx', ['--no-install', 'noisescope', '--help'], { cwd: app, encoding: 'utf8', timeout: 60_000 });
    expect([help.status, help.stderr]).toEqual([0, '']);
    expect(help.stdout).toMatch(/^noisescope — live gradient noise scale/);
    expect(help.stdout).toContain('noisescope report <log.ndjson>');
  });

  it('imports noisescope and noisescope/tui from an ESM script and serves gRPC from the shipped proto', async () => {
    await writeFile(
      join(app, 'check.mjs'),
      `import { startSidecar, readRunLog } from 'noisescope';
import { renderDashboard, Dashboard } from 'noisescope/tui';
const sidecar = await startSidecar({ port: 0 });
console.log(JSON.stringify({ address: sidecar.address, entries: [typeof readRunLog, typeof renderDashboard, typeof Dashboard] }));
await sidecar.close();
`,
    );
    const run = spawnSync(process.execPath, ['check.mjs'], { cwd: app, encoding: 'utf8', timeout: 60_000 });
    expect(run.status, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout)).toEqual({ address: expect.stringMatching(/^127\.0\.0\.1:\d+$/), entries: ['function', 'function', 'function'] });
  });

  it('type-checks a TypeScript consumer of both entry points against the shipped declarations', async () => {
    await writeFile(
      join(app, 'consumer.ts'),
      `import { startSidecar, type Sidecar, type StepStats } from 'noisescope';
import { renderDashboard, type DashboardSources } from 'noisescope/tui';
const sidecar: Sidecar = await startSidecar({ port: 0 });
const sources: DashboardSources = sidecar;
const bSimple = (s: StepStats): number | null => s.smoothed?.bSimple ?? null;
// @ts-expect-error the port is a number: the declarations are real types, not any
await startSidecar({ port: '50051' });
export { bSimple, renderDashboard, sources };
`,
    );
    const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
    const args = ['--noEmit', '--strict', '--skipLibCheck', '--target', 'es2022', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--types', 'node', '--typeRoots', join(ROOT, 'node_modules', '@types'), 'consumer.ts'];
    const check = spawnSync(process.execPath, [tsc, ...args], { cwd: app, encoding: 'utf8', timeout: 120_000 });
    expect(check.stdout + check.stderr).toBe('');
    expect(check.status).toBe(0);
  });
});
