import * as grpc from '@grpc/grpc-js';
import type { Observable, Subscription } from 'rxjs';
import { toNoiseScopeError, NoiseScopeError } from '../errors.js';
import { PROTOCOL_VERSION } from '../ingest/run-layout.js';
import type { Ingest, RankSession } from '../ingest/ingest.js';
import type { StepOutcome } from '../ingest/step-assembler.js';
import type { Recommendation } from '../types.js';
import type { GradientShard__Output } from './generated/noisescope/v1/GradientShard.js';
import type { RankMessage__Output } from './generated/noisescope/v1/RankMessage.js';
import type { StepBundle__Output } from './generated/noisescope/v1/StepBundle.js';
import type { StepEnd__Output } from './generated/noisescope/v1/StepEnd.js';
import type { SidecarMessage } from './generated/noisescope/v1/SidecarMessage.js';
import type { Recommendation as WireRecommendation } from './generated/noisescope/v1/Recommendation.js';
import { recommendationToWire } from './to-wire.js';
import { UNREAD_REFUSALS } from './limits.js';

export const SIDECAR_VERSION = '0.1.0';

type AttachCall = grpc.ServerDuplexStream<RankMessage__Output, SidecarMessage>;

/** Where a welcomed rank's stream gets the recommendations of its run. */
interface RankOutbox {
  /** The rank was welcomed into `run`: from now on it gets that run's recommendations. */
  welcomed(run: string, call: AttachCall): void;
  /** The stream is over (ended, failed, cancelled or replaced). */
  gone(call: AttachCall): void;
}

/**
 * The Attach RPC: a rank's Hello opens a session; each later message is
 * accepted or refused on its own (a Refusal on the stream, which stays open).
 * Only a stream that cannot be attributed to a run (no or bad Hello) is ended
 * with an error status. Every welcomed rank gets each new recommendation of
 * its run, and the run's latest right after its Welcome (so one made while the
 * hook was away is not lost).
 */
export class AttachService {
  private readonly calls = new Set<AttachCall>();
  /** Welcomed streams per run. */
  private readonly ranks = new Map<string, Set<AttachCall>>();
  private readonly latest = new Map<string, WireRecommendation>();
  private readonly subscription: Subscription;
  private readonly forgotten: Subscription;
  private readonly outbox: RankOutbox = {
    welcomed: (run, call) => {
      let calls = this.ranks.get(run);
      if (!calls) this.ranks.set(run, (calls = new Set()));
      calls.add(call);
      const latest = this.latest.get(run);
      if (latest) call.write({ recommendation: latest });
    },
    gone: (call) => {
      for (const [run, calls] of this.ranks) if (calls.delete(call) && calls.size === 0) this.ranks.delete(run);
    },
  };

  constructor(
    private readonly ingest: Ingest,
    recommendations$: Observable<Recommendation>,
  ) {
    this.subscription = recommendations$.subscribe((r) => {
      const wire = recommendationToWire(r);
      this.latest.set(r.run, wire);
      for (const call of this.ranks.get(r.run) ?? []) call.write({ recommendation: wire });
    });
    // A run the sidecar forgot (the runs limit made room) takes its latest advice with it.
    this.forgotten = ingest.runs$.subscribe((runs) => {
      const known = new Set(runs.map((r) => r.run));
      for (const run of this.latest.keys()) if (!known.has(run)) this.latest.delete(run);
    });
  }

  readonly handler: grpc.handleBidiStreamingCall<RankMessage__Output, SidecarMessage> = (call) => {
    this.calls.add(call);
    call.on('close', () => {
      this.calls.delete(call);
      this.outbox.gone(call);
    });
    handleAttach(this.ingest, call, this.outbox);
  };

  /** Ends every rank's stream (the sidecar is closing); hooks will reconnect to the next one. */
  close(): void {
    this.subscription.unsubscribe();
    this.forgotten.unsubscribe();
    for (const call of this.calls) call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'sidecar is shutting down' });
    this.calls.clear();
    this.ranks.clear();
  }
}

function handleAttach(ingest: Ingest, call: AttachCall, outbox: RankOutbox): void {
  {
    let session: RankSession | null = null;
    let ended = false;
    const stop = () => {
      ended = true;
      outbox.gone(call);
      session?.detach();
    };
    const fail = (error: NoiseScopeError) => {
      if (ended) return;
      stop();
      ingest.counters.refused++;
      call.emit('error', { code: error.grpcStatus, details: error.message });
    };
    const refuse = (error: NoiseScopeError, step: number) => {
      ingest.counters.refused++;
      // A client that floods bad messages and never reads its refusals must not grow our send buffer.
      if (!ended && call.writableLength < UNREAD_REFUSALS) call.write({ refusal: { code: error.grpcStatus, message: error.message, step } });
    };

    // Messages are handled one at a time, in order. A dense StepEnd may have to wait for its step's
    // reductions: the stream is paused meanwhile and what had already arrived waits in `backlog`.
    const backlog: RankMessage__Output[] = [];
    let waiting = false;
    let endedByPeer = false;
    const drain = (): void => {
      while (!waiting && backlog.length > 0) {
        const pending = handle(backlog.shift() as RankMessage__Output);
        if (pending) {
          waiting = true;
          call.pause();
          void pending.then(() => {
            waiting = false;
            call.resume();
            drain();
          });
        }
      }
      if (!waiting && backlog.length === 0 && endedByPeer) finishStream();
    };
    const finishStream = () => {
      // Said so rather than OK: grpc-js drops a final message cut short by the half-close without a word.
      if (!session) return fail(new NoiseScopeError('no-hello', 'the stream ended before a Hello arrived (was it truncated?): send Hello first'));
      const wasEnded = ended;
      stop();
      if (!wasEnded) call.end();
    };

    const named = (error: unknown, where: string): NoiseScopeError => {
      const e = toNoiseScopeError(error);
      return where ? new NoiseScopeError(e.code, where + e.message) : e;
    };
    const shard = (session: RankSession, message: GradientShard__Output, where: string): void => {
      try {
        session.shard(message);
      } catch (error) {
        refuse(named(error, where), message.step);
      }
    };
    const stepEnd = (session: RankSession, end: StepEnd__Output, where: string): Promise<void> | null => {
      const step = end.step;
      const ended = (outcome: StepOutcome) => {
        if (outcome.kind === 'incomplete') refuse(named(outcome.error, where), step);
      };
      try {
        const outcome = session.stepEnd(end);
        if (!(outcome instanceof Promise)) {
          ended(outcome);
          return null;
        }
        return outcome.then(ended, (error: unknown) => refuse(named(error, where), step));
      } catch (error) {
        refuse(named(error, where), step);
        return null;
      }
    };

    /** A StepBundle as its parts sent one by one; a refusal says which part it is about. */
    const bundle = (session: RankSession, message: StepBundle__Output): Promise<void> | null => {
      const { shards, end } = message;
      shards.forEach((s, i) => shard(session, s, `bundle shards[${i}] (step ${s.step} micro-batch ${s.microBatch}): `));
      if (end) return stepEnd(session, end, 'bundle end: ');
      refuse(new NoiseScopeError('invalid-message', `bundle without an end (step ${shards[0]?.step ?? 0}): a StepBundle must carry its StepEnd`), shards[0]?.step ?? 0);
      return null;
    };
    /** A StepBundles' bundles from `from` on, each as if sent alone: one whose end must wait holds back the rest. */
    const bundlesFrom = (session: RankSession, bundles: readonly StepBundle__Output[], from: number): Promise<void> | null => {
      for (let i = from; i < bundles.length && !ended; i++) {
        const pending = bundle(session, bundles[i] as StepBundle__Output);
        if (pending) return pending.then(() => bundlesFrom(session, bundles, i + 1) ?? undefined);
      }
      return null;
    };

    /** Handles one message; a promise when it must finish before the next is read. */
    const handle = (message: RankMessage__Output): Promise<void> | null => {
      if (ended) return null;
      ingest.counters.messages++;
      try {
        if (message.kind === 'hello' && message.hello) {
          if (session) {
            refuse(new NoiseScopeError('invalid-message', 'a second Hello on one stream: open a new stream to attach again'), 0);
            return null;
          }
          session = ingest.attach(message.hello);
          const attached = session;
          attached.onReplaced(() => fail(new NoiseScopeError('duplicate', `rank ${message.hello?.rank} reconnected on a newer stream`)));
          call.write({
            welcome: {
              protocolVersion: PROTOCOL_VERSION,
              sidecarVersion: SIDECAR_VERSION,
              run: attached.run,
              rank: attached.rank,
              takesBundles: true,
            },
          });
          outbox.welcomed(attached.run, call);
          return null;
        }
        if (!session) {
          throw new NoiseScopeError('no-hello', `${message.kind ?? 'an empty message'} before Hello: send Hello first`);
        }
        if (message.kind === 'shard' && message.shard) {
          shard(session, message.shard, '');
        } else if (message.kind === 'stepEnd' && message.stepEnd) {
          return stepEnd(session, message.stepEnd, '');
        } else if (message.kind === 'bundle' && message.bundle) {
          return bundle(session, message.bundle);
        } else if (message.kind === 'bundles' && message.bundles) {
          return bundlesFrom(session, message.bundles.bundles, 0);
        } else if (message.kind === 'goodbye' && message.goodbye) {
          session.goodbye(message.goodbye.dropped);
        } else {
          refuse(new NoiseScopeError('invalid-message', 'RankMessage with no kind set'), 0);
        }
      } catch (error) {
        // Only Hello problems and messages before Hello end the stream.
        fail(toNoiseScopeError(error));
      }
      return null;
    };
    call.on('data', (message: RankMessage__Output) => {
      backlog.push(message);
      drain();
    });
    call.on('end', () => {
      endedByPeer = true;
      drain();
    });
    call.on('cancelled', stop);
    call.on('error', stop);
  }
}
