// Column tiling shared by the blocked CPU backends: a tile of K rows × tileLength columns stays
// in L2 while all K(K+1)/2 pairs read it, so main memory sees each value once.

/** Tile length in elements: K × tile × 4 bytes ≈ 128 KiB, a multiple of 16, within [256, 16384]. */
export function tileLength(gradients: number): number {
  const fit = Math.floor(32768 / gradients / 16) * 16;
  return Math.min(16384, Math.max(256, fit));
}

/** Calls visit(start, length) for consecutive column tiles of a row of `length` elements. */
export function forEachTile(length: number, tile: number, visit: (start: number, length: number) => void): void {
  for (let start = 0; start < length; start += tile) visit(start, Math.min(tile, length - start));
}
