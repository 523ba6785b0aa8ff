// --png: noisescope draws SVG only and adds no dependency; a PNG comes from an SVG renderer the machine has.
import { spawnSync } from 'node:child_process';

interface Renderer {
  readonly name: string;
  /** Whether this machine's copy can read SVG. */
  readonly available: () => boolean;
  readonly args: (svg: string, png: string) => string[];
}

const runs = (command: string, args: string[]): string | null => {
  const result = spawnSync(command, args, { encoding: 'utf8', timeout: 10_000 });
  return result.error || result.status !== 0 ? null : `${result.stdout}${result.stderr}`;
};

const RENDERERS: readonly Renderer[] = [
  { name: 'rsvg-convert', available: () => runs('rsvg-convert', ['--version']) !== null, args: (svg, png) => ['-b', 'white', '-o', png, svg] },
  { name: 'inkscape', available: () => runs('inkscape', ['--version']) !== null, args: (svg, png) => [svg, '--export-type=png', `--export-filename=${png}`] },
  // ImageMagick reads SVG only through a delegate (librsvg or its own MSVG); `-list format` says whether one is there.
  { name: 'magick', available: () => /\bSVG\b.*r/.test(runs('magick', ['-list', 'format']) ?? ''), args: (svg, png) => [svg, png] },
  { name: 'convert', available: () => /\bSVG\b.*r/.test(runs('convert', ['-list', 'format']) ?? ''), args: (svg, png) => [svg, png] },
];

export const PNG_RENDERERS = RENDERERS.map((r) => r.name);

/** The first renderer found on PATH that reads SVG, or null. */
export function findPngRenderer(): Renderer | null {
  return RENDERERS.find((r) => r.available()) ?? null;
}

/** Renders `svg` (a file) to `png`; throws a message naming what was tried or what failed. */
export function svgToPng(svg: string, png: string): string {
  const renderer = findPngRenderer();
  if (renderer === null) {
    throw new Error(
      `--png needs an SVG renderer and none was found (tried ${PNG_RENDERERS.join(', ')}; an ImageMagick without an SVG delegate does not count): install librsvg2-bin or ImageMagick, or open the SVG in a browser; the SVG was written to ${svg}`,
    );
  }
  const result = spawnSync(renderer.name, renderer.args(svg, png), { encoding: 'utf8', timeout: 60_000 });
  if (result.error || result.status !== 0) throw new Error(`${renderer.name} could not render ${svg} to ${png}: ${result.error?.message ?? result.stderr.trim()}`);
  return renderer.name;
}
