// Fuzzing the sidecar's gRPC surface: malformed frames at the HTTP/2 level (random bytes, wrong or
// huge length prefixes, the compressed flag, truncated messages, garbage on the TCP port) and
// well-formed but adversarial RankMessages (NaN/Inf and negative norms, huge counts, mismatched
// layers, step regressions, duplicates, messages before Hello, bad Hellos, floods of runs and ranks).
// Each case expects a clean answer — a gRPC status or a Refusal (or, for bytes that are not HTTP/2,
// the server closing the connection) — and is counted. Case i draws from its own SeededRandom(seed, i),
// so `only: i` replays one failure alone.
import * as grpc from '@grpc/grpc-js';
import type * as http2 from 'node:http2';
import { connect as tcpConnect } from 'node:net';
import { loadProto } from '../transport/proto.js';
import type { NoiseScopeClient } from '../transport/generated/noisescope/v1/NoiseScope.js';
import type { Hello } from '../transport/generated/noisescope/v1/Hello.js';
import type { RankMessage } from '../transport/generated/noisescope/v1/RankMessage.js';
import type { SidecarMessage__Output } from '../transport/generated/noisescope/v1/SidecarMessage.js';
import { ATTACH_PATH, connectRaw, grpcFrame, rawCall } from './raw-grpc.js';
import { SeededRandom } from './synthetic-gradients.js';

export interface FuzzOptions {
  readonly seed: number;
  readonly cases: number;
  /** Cases in flight at once. */
  readonly concurrency: number;
  /** Replay this one case only. */
  readonly only?: number;
  /** The server's message-size limit (huge declared sizes are drawn above it). */
  readonly maxMessageBytes: number;
}

export const DEFAULT_FUZZ: FuzzOptions = { seed: 1, cases: 400, concurrency: 8, maxMessageBytes: 16 * 1024 * 1024 };

export interface FuzzKindCount {
  tried: number;
  clean: number;
}

export interface FuzzReport {
  readonly seed: number;
  readonly tried: number;
  /** Cases answered with a gRPC status or Refusal (or a closed connection for non-HTTP/2 bytes). */
  readonly clean: number;
  readonly byKind: Readonly<Record<string, FuzzKindCount>>;
  /** gRPC status codes seen in answers (status names), how often. */
  readonly statuses: Readonly<Record<string, number>>;
  /** Codes of the Refusals received on open streams (status names), how often. */
  readonly refusals: Readonly<Record<string, number>>;
  /** The first few cases that got no clean answer: index (replay with `only`), kind, what happened. */
  readonly unclean: readonly { readonly index: number; readonly kind: string; readonly detail: string }[];
}

const LAYERS = [
  { name: 'fc1.weight', numel: 8192, kind: 'Linear' },
  { name: 'fc1.bias', numel: 128, kind: 'Linear' },
  { name: 'fc2.weight', numel: 1280, kind: 'Linear' },
];
const GOOD_NORMS = [4, 1, 2];
/** Long enough for a status or refusal on a busy 2-core machine; a case left unanswered this long is unclean. */
const ANSWER_MS = 5_000;

interface Answer {
  readonly clean: boolean;
  readonly detail: string;
  readonly statuses: readonly number[];
  readonly refusals?: readonly number[];
}

type Case = (c: CaseContext) => Promise<Answer>;

interface CaseContext {
  readonly random: SeededRandom;
  readonly address: string;
  readonly client: NoiseScopeClient;
  readonly run: string;
  readonly options: FuzzOptions;
}

const int = (random: SeededRandom, below: number) => Math.floor(random.uniform() * below);
const pick = <T>(random: SeededRandom, items: readonly T[]): T => items[int(random, items.length)] as T;
const bytes = (random: SeededRandom, n: number) => Buffer.from(Array.from({ length: n }, () => int(random, 256)));

const helloMessage = (run: string, overrides: Partial<Hello> = {}): RankMessage => ({
  hello: { protocolVersion: 1, run, rank: 0, worldSize: 1, layers: LAYERS, mode: 'MODE_NORMS', every: 1, session: 'fuzz', ...overrides },
});
const shard = (step: number, microBatch: number, values: number[], examples = 16): RankMessage => ({ shard: { step, microBatch, examples, sqNorms: { values } } });
const stepEnd = (step: number, overrides: Record<string, unknown> = {}): RankMessage => ({
  stepEnd: { step, microBatches: 2, localExamples: 32, accumulatedSqNorms: [12, 3, 6], lr: 0.1, ...overrides },
});
const goodStep = (step: number): RankMessage[] => [shard(step, 0, GOOD_NORMS), shard(step, 1, GOOD_NORMS), stepEnd(step)];

const serialize = (m: RankMessage): Buffer => loadProto().noisescope.v1.NoiseScope.service.Attach.requestSerialize(m);

interface Attached {
  readonly refused: number;
  readonly refusalCodes: readonly number[];
  readonly status: grpc.StatusObject | null;
  readonly welcomed: boolean;
  readonly call: grpc.ClientDuplexStream<RankMessage, SidecarMessage__Output>;
  /** The stream's final status, whenever it comes (null after ANSWER_MS more). */
  readonly ended: Promise<grpc.StatusObject | null>;
}

/**
 * One Attach stream: sends `messages`, waits for `refusals` refusals or the stream's status;
 * with `keepOpen` the stream stays open and a Welcome is answer enough.
 */
function attach(c: CaseContext, messages: readonly RankMessage[], refusals: number, keepOpen = false) {
  return new Promise<Attached>((resolve) => {
    const call = c.client.Attach();
    let settle: (s: grpc.StatusObject | null) => void = () => {};
    const ended = new Promise<grpc.StatusObject | null>((r) => (settle = r));
    let refused = 0;
    const refusalCodes: number[] = [];
    let welcomed = false;
    let status: grpc.StatusObject | null = null;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (!keepOpen) call.end();
      else setTimeout(() => settle(null), ANSWER_MS).unref();
      resolve({ refused, refusalCodes, status, welcomed, call, ended });
    };
    const timer = setTimeout(finish, ANSWER_MS);
    call.on('data', (m: SidecarMessage__Output) => {
      if (m.welcome) welcomed = true;
      if (m.welcome && keepOpen && refusals === 0) finish();
      if (m.refusal) {
        refused++;
        refusalCodes.push(m.refusal.code);
      }
      if (refusals > 0 && refused >= refusals) finish();
    });
    call.on('status', (s: grpc.StatusObject) => {
      status = s;
      settle(s);
      finish();
    });
    call.on('error', () => {});
    for (const m of messages) call.write(m);
    if (refusals === 0 && !keepOpen) call.end();
  });
}

/** While a flood holds every run slot a Hello is refused by name (RESOURCE_EXHAUSTED): an answer too. */
const refusedAtLimit = (r: Attached) => !r.welcomed && r.status?.code === grpc.status.RESOURCE_EXHAUSTED;
const atLimit = (r: Attached): Answer => ({ clean: true, detail: `Hello refused at a limit: ${r.status?.details}`, statuses: [grpc.status.RESOURCE_EXHAUSTED] });

/** Hello, then the bad messages: each must be refused on the open stream. */
const refusedAfterHello =
  (make: (c: CaseContext) => RankMessage[], setup: (c: CaseContext) => RankMessage[] = () => []): Case =>
  async (c) => {
    const bad = make(c);
    const r = await attach(c, [helloMessage(c.run), ...setup(c), ...bad], bad.length);
    if (refusedAtLimit(r)) return atLimit(r);
    const clean = r.refused >= bad.length;
    return { clean, detail: `${r.refused} of ${bad.length} refused, status ${r.status?.code ?? 'none'} ${r.status?.details ?? ''}`, statuses: r.status ? [r.status.code] : [], refusals: r.refusalCodes };
  };

/** The stream itself must end with a non-OK status. */
const endedWithStatus =
  (make: (c: CaseContext) => RankMessage[]): Case =>
  async (c) => {
    const r = await attach(c, make(c), Number.POSITIVE_INFINITY);
    const clean = r.status !== null && r.status.code !== grpc.status.OK;
    return { clean, detail: `status ${r.status?.code ?? 'none'} ${r.status?.details ?? ''}`, statuses: r.status ? [r.status.code] : [] };
  };

/** Raw bytes on an HTTP/2 stream of `path`: a gRPC status must come back. */
const rawStatus =
  (make: (c: CaseContext) => Buffer, path = ATTACH_PATH, headers: http2.OutgoingHttpHeaders = {}): Case =>
  async (c) => {
    const session = await connectRaw(c.address);
    session.on('error', () => {});
    try {
      const out = await rawCall(session, path, make(c), true, ANSWER_MS, headers);
      return { clean: out.status !== null && out.status !== grpc.status.OK, detail: `status ${out.status ?? 'none'} ${out.message}`, statuses: out.status === null ? [] : [out.status] };
    } finally {
      session.destroy();
    }
  };

const nonFinite = (c: CaseContext) => pick(c.random, [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]);
const withBad = (c: CaseContext, value: number) => {
  const values = [...GOOD_NORMS];
  values[int(c.random, values.length)] = value;
  return values;
};
const hugeUint32 = (c: CaseContext) => 2 ** 31 + int(c.random, 2 ** 31);

export const FUZZ_CASES: Readonly<Record<string, Case>> = {
  // ------------------------------------------------------------ frames
  'random bytes': rawStatus((c) => bytes(c.random, 1 + int(c.random, 4096))),
  'length prefix too short': rawStatus((c) => {
    const hello = serialize(helloMessage(c.run));
    return grpcFrame(hello, { declared: int(c.random, hello.length) });
  }),
  'length prefix too long (truncated)': rawStatus((c) => {
    const hello = serialize(helloMessage(c.run));
    return grpcFrame(hello, { declared: hello.length + 1 + int(c.random, 1000) });
  }),
  'huge declared size': rawStatus((c) => grpcFrame(bytes(c.random, int(c.random, 64)), { declared: c.options.maxMessageBytes + 1 + int(c.random, 2 ** 32 - 1 - c.options.maxMessageBytes - 1) })),
  'compressed flag, not gzip inside': rawStatus((c) => grpcFrame(bytes(c.random, 1 + int(c.random, 256)), { compressed: true }), ATTACH_PATH, { 'grpc-encoding': 'gzip' }),
  'compressed flag, unknown encoding': rawStatus((c) => grpcFrame(serialize(helloMessage(c.run)), { compressed: true }), ATTACH_PATH, { 'grpc-encoding': 'x-fuzz' }),
  'truncated message': rawStatus((c) => {
    const hello = serialize(helloMessage(c.run));
    return grpcFrame(hello.subarray(0, 1 + int(c.random, hello.length - 1)));
  }),
  'random protobuf payload': rawStatus((c) => grpcFrame(bytes(c.random, 1 + int(c.random, 512)))),
  'unknown method': rawStatus((c) => grpcFrame(bytes(c.random, int(c.random, 16))), '/noisescope.v1.NoiseScope/Nope'),
  'bytes that are not HTTP/2': async (c) => {
    const [host, port] = [c.address.slice(0, c.address.lastIndexOf(':')), Number(c.address.slice(c.address.lastIndexOf(':') + 1))];
    const closed = await new Promise<boolean>((resolve) => {
      const socket = tcpConnect({ host, port });
      const timer = setTimeout(() => {
        socket.destroy();
        resolve(false);
      }, ANSWER_MS);
      socket.on('error', () => {});
      socket.resume(); // read, or the server's close is never seen
      socket.on('close', () => {
        clearTimeout(timer);
        resolve(true);
      });
      socket.on('connect', () => socket.write(bytes(c.random, 24 + int(c.random, 2048))));
    });
    return { clean: closed, detail: closed ? 'connection closed by the server' : 'connection left open', statuses: [] };
  },
  // ------------------------------------------------------------ messages
  'non-finite sq_norms': refusedAfterHello((c) => [shard(0, 0, withBad(c, nonFinite(c)))]),
  'negative sq_norms': refusedAfterHello((c) => [shard(0, 0, withBad(c, -1 - c.random.uniform() * 1e30))]),
  'wrong number of norms': refusedAfterHello((c) => [shard(0, 0, Array.from({ length: pick(c.random, [0, 1, 2, 4, 7, 1000]) }, () => 1))]),
  'zero examples': refusedAfterHello(() => [shard(0, 0, GOOD_NORMS, 0)]),
  'huge micro-batch index': refusedAfterHello((c) => [shard(0, 65_536 + int(c.random, 2 ** 32 - 65_536), GOOD_NORMS)]),
  'non-finite accumulated norms': refusedAfterHello((c) => [stepEnd(0, { accumulatedSqNorms: withBad(c, nonFinite(c)) })], () => [shard(0, 0, GOOD_NORMS), shard(0, 1, GOOD_NORMS)]),
  'step end with zero micro-batches': refusedAfterHello(() => [stepEnd(0, { microBatches: 0 })]),
  'local examples disagree with shards': refusedAfterHello((c) => [stepEnd(0, { localExamples: 33 + int(c.random, 2 ** 31) })], () => [shard(0, 0, GOOD_NORMS), shard(0, 1, GOOD_NORMS)]),
  'missing shards': refusedAfterHello((c) => [stepEnd(0, { microBatches: 3 + int(c.random, 1000) })], () => [shard(0, 0, GOOD_NORMS), shard(0, 1, GOOD_NORMS)]),
  'step regression': refusedAfterHello((c) => [shard(int(c.random, 5), 0, GOOD_NORMS)], () => goodStep(5)),
  'duplicate step end': refusedAfterHello(() => [stepEnd(3)], () => goodStep(3)),
  'duplicate shard': refusedAfterHello(() => [shard(0, 0, GOOD_NORMS)], () => [shard(0, 0, GOOD_NORMS)]),
  'dense chunk in a norms run': refusedAfterHello((c) => [
    { shard: { step: 0, microBatch: 0, examples: 16, layer: int(c.random, 5), microBatches: 2, dense: { offset: 0, dtype: 'DTYPE_F32', data: bytes(c.random, 4 * (1 + int(c.random, 64))) } } },
  ]),
  'second Hello on one stream': refusedAfterHello((c) => [helloMessage(c.run)]),
  'message with no kind': refusedAfterHello(() => [{}]),
  'shard before Hello': endedWithStatus(() => [shard(0, 0, GOOD_NORMS)]),
  'step end before Hello': endedWithStatus(() => [stepEnd(0)]),
  'bad Hello': endedWithStatus((c) =>
    [
      helloMessage(c.run, pick(c.random, [
        { protocolVersion: pick(c.random, [0, 2, 2 ** 32 - 1]) },
        { run: '' },
        { run: 'r'.repeat(1025 + int(c.random, 4000)) },
        { worldSize: 0 },
        { worldSize: 70_000 + int(c.random, 2 ** 31) },
        { rank: 1 + int(c.random, 1000) },
        { layers: [] },
        { layers: [LAYERS[0]!, LAYERS[0]!] },
        { layers: [{ name: 'w', numel: 0, kind: 'Linear' }] },
        { layers: [{ name: '', numel: 3, kind: 'Linear' }] },
      ] as Partial<Hello>[])),
    ]),
  'layout mismatch across ranks': async (c) => {
    const first = await attach(c, [helloMessage(c.run, { worldSize: 2 })], 0, true);
    if (refusedAtLimit(first)) return atLimit(first);
    const other = pick(c.random, [{ worldSize: 3 }, { worldSize: 2, rank: 1, layers: LAYERS.slice(0, 2) }, { worldSize: 2, rank: 1, layers: [{ ...LAYERS[0]!, numel: 7 }, LAYERS[1]!, LAYERS[2]!] }]);
    const second = await attach(c, [helloMessage(c.run, other)], Number.POSITIVE_INFINITY);
    first.call.end();
    const clean = first.welcomed && second.status !== null && second.status.code !== grpc.status.OK;
    return { clean, detail: `status ${second.status?.code ?? 'none'} ${second.status?.details ?? ''}`, statuses: second.status ? [second.status.code] : [] };
  },
  'flood of ranks, one rank twice': async (c) => {
    const world = 8 + int(c.random, 57);
    const ranks = await Promise.all(Array.from({ length: world }, (_, rank) => attach(c, [helloMessage(c.run, { worldSize: world, rank })], 0, true)));
    if (ranks.some(refusedAtLimit)) {
      for (const r of ranks) r.call.end();
      return ranks.every((r) => r.welcomed || refusedAtLimit(r)) ? atLimit(ranks.find(refusedAtLimit)!) : { clean: false, detail: 'neither welcomed nor refused at the limit', statuses: [] };
    }
    // The same rank again: the newer stream takes over, the older one is ended with ALREADY_EXISTS.
    const again = await attach(c, [helloMessage(c.run, { worldSize: world, rank: 0 })], 0, true);
    const replaced = await ranks[0]!.ended;
    for (const r of [...ranks, again]) r.call.end();
    const clean = ranks.every((r) => r.welcomed) && again.welcomed && replaced?.code === grpc.status.ALREADY_EXISTS;
    return { clean, detail: `${ranks.filter((r) => r.welcomed).length}/${world} welcomed; first stream ended ${replaced?.code ?? 'no'} ${replaced?.details ?? ''}`, statuses: replaced ? [replaced.code] : [] };
  },
  'flood of Hellos (runs)': async (c) => {
    const n = 16 + int(c.random, 48);
    const all = await Promise.all(Array.from({ length: n }, (_, i) => attach(c, [helloMessage(`${c.run}-${i}`)], 0, true)));
    for (const r of all) r.call.end();
    // Within the runs limit each is welcomed; past it each is refused by name. Either way, an answer.
    const answered = all.filter((r) => r.welcomed || (r.status !== null && r.status.code === grpc.status.RESOURCE_EXHAUSTED));
    return { clean: answered.length === n, detail: `${answered.length} of ${n} welcomed or refused`, statuses: all.flatMap((r) => (r.status ? [r.status.code] : [])) };
  },
};

const KINDS = Object.keys(FUZZ_CASES);
const STATUS_NAMES = Object.fromEntries(Object.entries(grpc.status).filter(([, v]) => typeof v === 'number').map(([k, v]) => [v, k])) as Record<number, string>;

/** Runs `cases` seeded cases against the sidecar at `address`. */
export async function fuzzSidecar(address: string, options: Partial<FuzzOptions> = {}): Promise<FuzzReport> {
  const o: FuzzOptions = { ...DEFAULT_FUZZ, ...options };
  const Service = loadProto().noisescope.v1.NoiseScope;
  const client: NoiseScopeClient = new Service(address, grpc.credentials.createInsecure());
  const byKind: Record<string, FuzzKindCount> = Object.fromEntries(KINDS.map((k) => [k, { tried: 0, clean: 0 }]));
  const statuses: Record<string, number> = {};
  const refusals: Record<string, number> = {};
  const count = (into: Record<string, number>, code: number) => {
    const name = STATUS_NAMES[code] ?? String(code);
    into[name] = (into[name] ?? 0) + 1;
  };
  const unclean: { index: number; kind: string; detail: string }[] = [];
  let tried = 0;
  let clean = 0;
  const runCase = async (index: number) => {
    const random = new SeededRandom(o.seed * 1_000_003 + index);
    const kind = KINDS[int(random, KINDS.length)] as string;
    let answer: Answer;
    try {
      answer = await (FUZZ_CASES[kind] as Case)({ random, address, client, run: `fuzz-${o.seed}-${index}`, options: o });
    } catch (error) {
      answer = { clean: false, detail: `the case threw: ${(error as Error).message}`, statuses: [] };
    }
    tried++;
    (byKind[kind] as FuzzKindCount).tried++;
    for (const code of answer.statuses) count(statuses, code);
    for (const code of answer.refusals ?? []) count(refusals, code);
    if (answer.clean) {
      clean++;
      (byKind[kind] as FuzzKindCount).clean++;
    } else if (unclean.length < 20) {
      unclean.push({ index, kind, detail: answer.detail });
    }
  };
  try {
    const indices = o.only !== undefined ? [o.only] : Array.from({ length: o.cases }, (_, i) => i);
    for (let i = 0; i < indices.length; i += o.concurrency) await Promise.all(indices.slice(i, i + o.concurrency).map(runCase));
  } finally {
    client.close();
  }
  return { seed: o.seed, tried, clean, byKind, statuses, refusals, unclean };
}

export function formatFuzzReport(r: FuzzReport): string {
  const kinds = Object.entries(r.byKind)
    .filter(([, k]) => k.tried > 0)
    .map(([kind, k]) => `  ${kind}: ${k.clean}/${k.tried}`);
  const tally = (counts: Readonly<Record<string, number>>) => Object.entries(counts).sort((a, b) => b[1] - a[1]).map(([s, n]) => `${s} ${n}`).join(', ') || 'none';
  return [
    `fuzz (seed ${r.seed}): ${r.tried} cases tried, ${r.clean} answered cleanly (a gRPC status, a Refusal, or a closed connection for non-HTTP/2 bytes)`,
    ...kinds,
    `stream statuses: ${tally(r.statuses)}`,
    `refusals on open streams: ${tally(r.refusals)}`,
    ...r.unclean.map((u) => `  NOT CLEAN #${u.index} (${u.kind}): ${u.detail} — replay with --seed ${r.seed} --only ${u.index}`),
  ].join('\n');
}
