import { NoiseScopeError } from '../errors.js';
import type { Hello__Output } from '../transport/generated/noisescope/v1/Hello.js';
import type { Layer__Output } from '../transport/generated/noisescope/v1/Layer.js';
import type { BatchPolicy, LayerInfo, SketchSpec } from '../types.js';
import { sketchMismatch, sketchSpecFromHello } from './sketch-spec.js';
import { policyFromWire } from './policy-from-wire.js';
import { DEFAULT_LIMITS, limitExceeded, type SidecarLimits } from '../transport/limits.js';

export const PROTOCOL_VERSION = 1;
/** Names are cut here; layers and ranks per run are SidecarLimits (src/transport/limits.ts). */
export const LIMITS = { nameLength: 1_024 } as const;

/** What a run is: fixed by its first Hello, checked against every later one. */
export interface RunLayout {
  readonly run: string;
  readonly worldSize: number;
  readonly layers: readonly LayerInfo[];
  /** Parameters the hook cannot measure (not in `layers`): the estimate covers the rest. */
  readonly uncoveredLayers: readonly LayerInfo[];
  readonly datasetSize: number | null;
  readonly every: number;
  readonly mode: 'norms' | 'dense' | 'sketch';
  readonly optimizer: string | null;
  /** The recommendation bounds the first Hello asked for (unset fields absent). */
  readonly policy: Partial<BatchPolicy>;
  /** Sketch mode only: the sketches every rank declared. */
  readonly sketch?: SketchSpec;
  /** The first Hello's per-example sums are sampled estimates (shown beside the source). */
  readonly perExampleSampled: boolean;
}

const MODES = { MODE_UNSPECIFIED: 'norms', MODE_NORMS: 'norms', MODE_DENSE: 'dense', MODE_SKETCH: 'sketch' } as const;

/** Validates a Hello; throws a NoiseScopeError saying what is wrong. */
export function layoutFromHello(hello: Hello__Output, limits: Pick<SidecarLimits, 'layersPerRun' | 'ranksPerRun'> = DEFAULT_LIMITS): RunLayout {
  if (hello.protocolVersion !== PROTOCOL_VERSION) {
    throw new NoiseScopeError(
      'protocol-mismatch',
      `hook speaks protocol version ${hello.protocolVersion}, this sidecar speaks ${PROTOCOL_VERSION}: upgrade the older side`,
    );
  }
  const invalid = (why: string) => new NoiseScopeError('invalid-message', `Hello: ${why}`);
  if (!hello.run) throw invalid('run name is empty');
  if (hello.run.length > LIMITS.nameLength) throw invalid(`run name is longer than ${LIMITS.nameLength} characters`);
  if (hello.worldSize < 1) throw invalid(`world_size ${hello.worldSize} is below 1`);
  if (hello.worldSize > limits.ranksPerRun) throw limitExceeded('ranksPerRun', limits.ranksPerRun, `Hello: world_size ${hello.worldSize} is too many ranks`);
  if (hello.rank >= hello.worldSize) throw invalid(`rank ${hello.rank} is not below world_size ${hello.worldSize}`);
  if (hello.layers.length === 0) throw invalid('no layers declared');
  if (hello.layers.length > limits.layersPerRun) throw limitExceeded('layersPerRun', limits.layersPerRun, `Hello: ${hello.layers.length} layers are too many`);
  const seen = new Set<string>();
  const layers = hello.layers.map((layer, i) => toLayerInfo(layer, `layer ${i}`, seen, invalid));
  if (hello.layers.length + hello.uncoveredLayers.length > limits.layersPerRun) {
    throw limitExceeded('layersPerRun', limits.layersPerRun, `Hello: ${hello.layers.length} layers and ${hello.uncoveredLayers.length} uncovered layers are too many`);
  }
  // Distinct from the covered names too: a parameter is either measured or not.
  const uncoveredLayers = hello.uncoveredLayers.map((layer, i) => toLayerInfo(layer, `uncovered layer ${i}`, seen, invalid));
  const mode = MODES[hello.mode as keyof typeof MODES];
  if (mode === undefined) throw invalid(`unknown mode ${String(hello.mode)}`);
  return {
    run: hello.run,
    worldSize: hello.worldSize,
    layers,
    uncoveredLayers,
    datasetSize: hello.datasetSize > 0 ? hello.datasetSize : null,
    every: Math.max(1, hello.every),
    mode,
    optimizer: hello.optimizer ? hello.optimizer.slice(0, LIMITS.nameLength) : null,
    policy: policyFromWire(hello.policy),
    perExampleSampled: hello.perExampleSampled,
    ...(mode === 'sketch' ? { sketch: sketchSpecFromHello(hello.sketch, layers) } : {}),
  };
}

function toLayerInfo(layer: Layer__Output, which: string, seen: Set<string>, invalid: (why: string) => NoiseScopeError): LayerInfo {
  if (!layer.name) throw invalid(`${which} has no name`);
  if (seen.has(layer.name)) throw invalid(`layer name '${layer.name}' appears twice${which.startsWith('uncovered') ? ' (in layers and uncovered_layers together)' : ''}`);
  if (!(layer.numel >= 1)) throw invalid(`${which} '${layer.name}' declares ${layer.numel} elements`);
  seen.add(layer.name);
  return { name: layer.name, numel: layer.numel, kind: layer.kind };
}

/** A later rank must agree with the run's first Hello. */
export function checkSameLayout(run: RunLayout, next: RunLayout): void {
  const mismatch = (why: string) =>
    new NoiseScopeError('layout-mismatch', `run '${run.run}' is already attached with ${why}`);
  if (next.worldSize !== run.worldSize) {
    throw mismatch(`world_size ${run.worldSize}; this rank declared ${next.worldSize}`);
  }
  if (next.layers.length !== run.layers.length) {
    throw mismatch(`${run.layers.length} layers; this rank declared ${next.layers.length}`);
  }
  run.layers.forEach((layer, i) => {
    const other = next.layers[i] as LayerInfo;
    if (other.name !== layer.name || other.numel !== layer.numel) {
      throw mismatch(`layer ${i} = '${layer.name}' (${layer.numel}); this rank declared '${other.name}' (${other.numel})`);
    }
  });
  const names = (layers: readonly LayerInfo[]) =>
    layers.length === 0 ? 'none' : layers.length <= 5 ? layers.map((l) => l.name).join(', ') : `${layers.length} (${layers[0]?.name}, …)`;
  const same = next.uncoveredLayers.length === run.uncoveredLayers.length && next.uncoveredLayers.every((l, i) => l.name === run.uncoveredLayers[i]?.name);
  if (!same) {
    throw mismatch(`uncovered layers ${names(run.uncoveredLayers)}; this rank declared ${names(next.uncoveredLayers)}`);
  }
  const sketch = sketchMismatch(run.sketch, next.sketch);
  if (sketch) throw mismatch(sketch);
}
