// Back-pressure for one Watch call. grpc-js buffers every write a client has not read, without bound;
// this writes only while the call's stream accepts (write() returned true, or after 'drain') and holds
// the rest in a queue of at most `capacity` events. Past it the oldest step, layer or health event goes
// first (a later one supersedes it), then the oldest of any kind; every drop is counted.
import type { RunEvent } from './generated/noisescope/v1/RunEvent.js';

/** The part of a grpc-js server-streaming call the queue writes to. */
export interface WatchSink {
  write(event: RunEvent): boolean;
  end(): void;
  once(event: 'drain', listener: () => void): unknown;
}

const SUPERSEDED = new Set<RunEvent['kind']>(['step', 'layers', 'health']);

const kindOf = (event: RunEvent): RunEvent['kind'] =>
  event.step ? 'step' : event.layers ? 'layers' : event.health ? 'health' : undefined;

export class WatchQueue {
  private readonly queue: RunEvent[] = [];
  private blocked = false;
  private closed = false;
  private ending = false;
  /** Events dropped because the client did not read them in time. */
  dropped = 0;

  constructor(
    private readonly sink: WatchSink,
    private readonly capacity: number,
  ) {}

  /** Events waiting for the client to read. */
  get queued(): number {
    return this.queue.length;
  }

  push(event: RunEvent): void {
    if (this.closed || this.ending) return;
    if (!this.blocked) return this.write(event);
    this.queue.push(event);
    if (this.queue.length > this.capacity) this.dropOldest();
  }

  /** Ends the call once what waits is written (a client that never reads is cut off by the server's shutdown). */
  end(): void {
    if (this.closed || this.ending) return;
    this.ending = true;
    if (!this.blocked) this.sink.end();
  }

  /** The call ended: forget what waits. */
  close(): void {
    this.closed = true;
    this.queue.length = 0;
  }

  private write(event: RunEvent): void {
    if (this.sink.write(event)) return;
    this.blocked = true;
    this.sink.once('drain', this.flush);
  }

  private readonly flush = (): void => {
    this.blocked = false;
    while (!this.blocked && !this.closed && this.queue.length > 0) this.write(this.queue.shift() as RunEvent);
    if (this.ending && !this.blocked && !this.closed) this.sink.end();
  };

  private dropOldest(): void {
    const i = this.queue.findIndex((e) => SUPERSEDED.has(kindOf(e)));
    this.queue.splice(i === -1 ? 0 : i, 1);
    this.dropped++;
  }
}
