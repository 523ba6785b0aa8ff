// Just enough SVG writing for the report: escaped text, attributes in a fixed order, coordinates to 0.01 px.

/** A coordinate: two decimals keep the file small and the output byte-for-byte deterministic. */
export const px = (v: number): string => String(Math.round(v * 100) / 100);

export function escapeXml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!);
}

export type Attributes = Readonly<Record<string, string | number | undefined>>;

/** `<name a="…">children</name>`, or self-closed without children; numbers pass through px(). */
export function el(name: string, attributes: Attributes, ...children: string[]): string {
  const attrs = Object.entries(attributes)
    .filter((entry): entry is [string, string | number] => entry[1] !== undefined)
    .map(([k, v]) => ` ${k}="${typeof v === 'number' ? px(v) : escapeXml(v)}"`)
    .join('');
  return children.length === 0 ? `<${name}${attrs}/>` : `<${name}${attrs}>${children.join('')}</${name}>`;
}

export const text = (attributes: Attributes, content: string): string => el('text', attributes, escapeXml(content));

/** A polyline path through points; null points break it into separate runs. */
export function pathData(points: readonly ([number, number] | null)[]): string {
  let d = '';
  let pen = false;
  for (const p of points) {
    if (p === null) {
      pen = false;
      continue;
    }
    d += `${pen ? 'L' : d === '' ? 'M' : ' M'}${px(p[0])},${px(p[1])}`;
    pen = true;
  }
  return d;
}

const VIRIDIS = ['#440154', '#414487', '#2a788e', '#22a884', '#7ad151', '#fde725'];

/** Viridis at t ∈ [0, 1] (readable in greyscale print and by colour-blind readers). */
export function viridis(t: number): string {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const mix = (a: string, b: string, f: number, at: number) =>
    Math.round(parseInt(a.slice(at, at + 2), 16) * (1 - f) + parseInt(b.slice(at, at + 2), 16) * f)
      .toString(16)
      .padStart(2, '0');
  const a = VIRIDIS[i]!;
  const b = VIRIDIS[i + 1]!;
  return `#${mix(a, b, x - i, 1)}${mix(a, b, x - i, 3)}${mix(a, b, x - i, 5)}`;
}
