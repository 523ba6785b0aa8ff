import * as grpc from '@grpc/grpc-js';
import { toNoiseScopeError, NoiseScopeError } from '../errors.js';
import { PROTOCOL_VERSION } from '../ingest/run-layout.js';
import type { Ingest, RankSession } from '../ingest/ingest.js';
import type { RankMessage__Output } from './generated/noisescope/v1/RankMessage.js';
import type { SidecarMessage } from './generated/noisescope/v1/SidecarMessage.js';

export const SIDECAR_VERSION = '0.1.0';

type AttachCall = grpc.ServerDuplexStream<RankMessage__Output, SidecarMessage>;

/**
 * The Attach RPC: a rank's Hello opens a session; each later message is
 * accepted or refused on its own (a Refusal on the stream, which stays open).
 * Only a stream that cannot be attributed to a run (no or bad Hello) is ended
 * with an error status.
 */
export class AttachService {
  private readonly calls = new Set<AttachCall>();

  constructor(private readonly ingest: Ingest) {}

  readonly handler: grpc.handleBidiStreamingCall<RankMessage__Output, SidecarMessage> = (call) => {
    this.calls.add(call);
    call.on('close', () => this.calls.delete(call));
    handleAttach(this.ingest, call);
  };

  /** Ends every rank's stream (the sidecar is closing); hooks will reconnect to the next one. */
  close(): void {
    for (const call of this.calls) call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'sidecar is shutting down' });
    this.calls.clear();
  }
}

function handleAttach(ingest: Ingest, call: AttachCall): void {
  {
    let session: RankSession | null = null;
    let ended = false;
    const fail = (error: NoiseScopeError) => {
      if (ended) return;
      ended = true;
      ingest.counters.refused++;
      session?.detach();
      call.emit('error', { code: error.grpcStatus, details: error.message });
    };
    const refuse = (error: NoiseScopeError, step: number) => {
      ingest.counters.refused++;
      if (!ended) call.write({ refusal: { code: error.grpcStatus, message: error.message, step } });
    };

    call.on('data', (message: RankMessage__Output) => {
      if (ended) return;
      ingest.counters.messages++;
      try {
        if (message.kind === 'hello' && message.hello) {
          if (session) {
            refuse(new NoiseScopeError('invalid-message', 'a second Hello on one stream: open a new stream to attach again'), 0);
            return;
          }
          session = ingest.attach(message.hello);
          session.onReplaced(() => fail(new NoiseScopeError('duplicate', `rank ${message.hello?.rank} reconnected on a newer stream`)));
          call.write({
            welcome: { protocolVersion: PROTOCOL_VERSION, sidecarVersion: SIDECAR_VERSION, run: session.run, rank: session.rank },
          });
          return;
        }
        if (!session) {
          throw new NoiseScopeError('no-hello', `${message.kind ?? 'an empty message'} before Hello: send Hello first`);
        }
        if (message.kind === 'shard' && message.shard) {
          try {
            session.shard(message.shard);
          } catch (error) {
            refuse(toNoiseScopeError(error), message.shard.step);
          }
        } else if (message.kind === 'stepEnd' && message.stepEnd) {
          try {
            const outcome = session.stepEnd(message.stepEnd);
            if (outcome.kind === 'incomplete') refuse(outcome.error, message.stepEnd.step);
          } catch (error) {
            refuse(toNoiseScopeError(error), message.stepEnd.step);
          }
        } else if (message.kind === 'goodbye' && message.goodbye) {
          session.goodbye(message.goodbye.dropped);
        } else {
          refuse(new NoiseScopeError('invalid-message', 'RankMessage with no kind set'), 0);
        }
      } catch (error) {
        // Only Hello problems and messages before Hello end the stream.
        fail(toNoiseScopeError(error));
      }
    });
    call.on('end', () => {
      session?.detach();
      if (!ended) {
        ended = true;
        call.end();
      }
    });
    call.on('cancelled', () => {
      ended = true;
      session?.detach();
    });
    call.on('error', () => {
      ended = true;
      session?.detach();
    });
  }
}
