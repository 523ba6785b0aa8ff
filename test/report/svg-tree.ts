// A strict little XML reader for the report's SVG: it throws on anything not well formed
// (unbalanced or misnested tags, unquoted attributes, stray '&' or '<'), so a test that
// parses the figure also proves a browser or an SVG tool can read it.

export interface SvgNode {
  readonly name: string;
  readonly attributes: Readonly<Record<string, string>>;
  readonly children: SvgNode[];
  /** Text directly inside, entities decoded. */
  text: string;
}

const ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

function decode(raw: string, where: number): string {
  if (/[<]/.test(raw)) throw new Error(`'<' in text at ${where}`);
  return raw.replace(/&([a-z]*);?/g, (whole, name: string) => {
    if (!whole.endsWith(';') || !(name in ENTITIES)) throw new Error(`bad entity '${whole}' at ${where}`);
    return ENTITIES[name]!;
  });
}

export function parseSvg(source: string): SvgNode {
  const root: SvgNode = { name: '#document', attributes: {}, children: [], text: '' };
  const stack: SvgNode[] = [root];
  const tag = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/y;
  let i = 0;
  while (i < source.length) {
    const lt = source.indexOf('<', i);
    const end = lt === -1 ? source.length : lt;
    const between = source.slice(i, end);
    if (between.trim() !== '') {
      if (stack.length === 1) throw new Error(`text outside the root element at ${i}`);
      stack.at(-1)!.text += decode(between, i);
    }
    if (lt === -1) break;
    tag.lastIndex = lt;
    const m = tag.exec(source);
    if (!m) throw new Error(`malformed tag at ${lt}: ${source.slice(lt, lt + 60)}`);
    const [, closing, name, attrs, selfClosing] = m;
    if (closing) {
      const open = stack.pop()!;
      if (open.name !== name) throw new Error(`</${name}> closes <${open.name}> at ${lt}`);
    } else {
      const attributes: Record<string, string> = {};
      for (const a of attrs!.matchAll(/([\w:-]+)="([^"]*)"/g)) {
        if (a[1]! in attributes) throw new Error(`attribute ${a[1]} twice at ${lt}`);
        attributes[a[1]!] = decode(a[2]!, lt);
      }
      const node: SvgNode = { name: name!, attributes, children: [], text: '' };
      stack.at(-1)!.children.push(node);
      if (!selfClosing) stack.push(node);
    }
    i = tag.lastIndex;
  }
  if (stack.length !== 1) throw new Error(`<${stack.at(-1)!.name}> never closed`);
  if (root.children.length !== 1) throw new Error(`${root.children.length} root elements`);
  return root.children[0]!;
}

export function* descendants(node: SvgNode): Generator<SvgNode> {
  for (const child of node.children) {
    yield child;
    yield* descendants(child);
  }
}

export function byId(root: SvgNode, id: string): SvgNode {
  for (const n of descendants(root)) if (n.attributes.id === id) return n;
  throw new Error(`no element with id '${id}'`);
}

export const withClass = (root: SvgNode, cls: string): SvgNode[] => [...descendants(root)].filter((n) => (n.attributes.class ?? '').split(' ').includes(cls));

/** All text in a subtree. */
export const textOf = (node: SvgNode): string => node.text + node.children.map(textOf).join(' ');

/**
 * An axis read back from the figure alone: its ticks' values and pixel positions
 * (from their translate), fitted as linear or log10 as the axis says. Returns pixel → value.
 */
export function readAxis(axis: SvgNode): (pixel: number) => number {
  const log = axis.attributes['data-scale'] === 'log';
  const ticks = axis.children
    .filter((n) => n.attributes.class === 'tick')
    .map((n) => {
      const t = /translate\(([-\d.]+),([-\d.]+)\)/.exec(n.attributes.transform ?? '')!;
      const pixel = axis.attributes.class === 'axis x' ? Number(t[1]) : Number(t[2]);
      const value = Number(n.attributes['data-value']);
      return { pixel, value: log ? Math.log10(value) : value };
    });
  if (ticks.length < 2) throw new Error('an axis needs two ticks to be read');
  const a = ticks[0]!;
  const b = ticks.at(-1)!;
  const slope = (b.value - a.value) / (b.pixel - a.pixel);
  return (pixel) => {
    const v = a.value + (pixel - a.pixel) * slope;
    return log ? 10 ** v : v;
  };
}

/** The vertices of a path written as M/L commands, with a break (null) at every M after the first. */
export function pathPoints(d: string): ([number, number] | null)[] {
  const points: ([number, number] | null)[] = [];
  for (const m of d.matchAll(/([ML])([-\d.]+),([-\d.]+)/g)) {
    if (m[1] === 'M' && points.length > 0) points.push(null);
    points.push([Number(m[2]), Number(m[3])]);
  }
  return points;
}
