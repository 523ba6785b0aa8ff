import type { LayerEstimate, LayerStats } from '../../src/types.js';
import { short } from '../chart.js';
import { Line, Panel, Toned } from './toned.js';

export type LayerSort = 'bSimple' | 'gradSqNorm' | 'traceSigma' | 'name';
export const LAYER_SORTS: readonly LayerSort[] = ['bSimple', 'gradSqNorm', 'traceSigma', 'name'];
const SORT_LABEL: Readonly<Record<LayerSort, string>> = {
  bSimple: 'B_simple ↓ (noisiest first)',
  gradSqNorm: '|G|² ↓',
  traceSigma: 'tr(Σ) ↓',
  name: 'name',
};

export function sortLayers(layers: readonly LayerEstimate[], key: LayerSort): LayerEstimate[] {
  const desc = (v: number | null) => (v === null || Number.isNaN(v) ? -Infinity : v);
  return [...layers].sort((a, b) =>
    key === 'name' ? a.name.localeCompare(b.name) : desc(b[key]) - desc(a[key]) || a.name.localeCompare(b.name),
  );
}

export interface LayersPanelProps {
  readonly layers: LayerStats | null;
  readonly sort: LayerSort;
  readonly scroll: number;
  readonly width: number;
  readonly height: number;
  readonly focused: boolean;
}

/** Rows that fit in a panel of this height. */
export const layerRows = (height: number): number => Math.max(1, height - 5);

/** Per-layer smoothed B_simple, |G|², tr(Σ); sortable, scrollable. */
export function LayersPanel({ layers, sort, scroll, width, height, focused }: LayersPanelProps) {
  const all = layers ? sortLayers(layers.layers, sort) : [];
  const rows = layerRows(height);
  const first = Math.min(scroll, Math.max(0, all.length - rows));
  const nameWidth = Math.max(6, Math.min(40, width - 4 - 3 * 9));
  return (
    <Panel title={`Layers · ${SORT_LABEL[sort]}`} focused={focused} width={width} height={height}>
      {all.length === 0 ? (
        <Toned tone="muted">no per-layer estimates yet</Toned>
      ) : (
        <>
          <Toned tone="muted">{`${'layer'.padEnd(nameWidth)}${'B_simple'.padStart(9)}${'|G|²'.padStart(9)}${'tr(Σ)'.padStart(9)}`}</Toned>
          {all.slice(first, first + rows).map((l) => (
            <Line key={l.name}>
              <Toned tone="plain">{fit(l.name, nameWidth)}</Toned>
              <Toned tone={l.bSimple === null ? 'warn' : 'accent'}>{short(l.bSimple).padStart(9)}</Toned>
              <Toned tone="plain">{`${short(l.gradSqNorm).padStart(9)}${short(l.traceSigma).padStart(9)}`}</Toned>
            </Line>
          ))}
          <Toned tone="muted">{`${first + 1}–${Math.min(all.length, first + rows)} of ${all.length}${focused ? '  ↑/↓ scroll, s sort' : '  l to focus'}`}</Toned>
        </>
      )}
    </Panel>
  );
}

function fit(name: string, width: number): string {
  if (name.length <= width) return name.padEnd(width);
  return `…${name.slice(name.length - width + 1)}`;
}
