import * as grpc from '@grpc/grpc-js';
import { asapScheduler, merge, observeOn, Subject, takeUntil, type Observable, type Subscription } from 'rxjs';
import { filter, map } from 'rxjs/operators';
import type { Health, LayerStats, Recommendation, RunInfo, StepStats } from '../types.js';
import type { RunEvent } from './generated/noisescope/v1/RunEvent.js';
import type { WatchRequest__Output } from './generated/noisescope/v1/WatchRequest.js';
import { healthToWire, layerStatsToWire, recommendationToWire, runInfoToWire, stepStatsToWire } from './to-wire.js';
import { DEFAULT_LIMITS } from './limits.js';
import { WatchQueue } from './watch-queue.js';

export interface WatchSources {
  readonly runs$: Observable<readonly RunInfo[]>;
  readonly stats$: Observable<StepStats>;
  readonly layers$: Observable<LayerStats>;
  readonly health$: Observable<Health>;
  readonly recommendations$: Observable<Recommendation>;
}

/** Watch calls now, events they hold for clients that have not read them, events dropped so (over all calls ever). */
export interface WatchStats {
  readonly watchers: number;
  readonly queued: number;
  readonly dropped: number;
}

/**
 * The Watch RPC: a subscriber of the public Observables like any other. Each
 * call first gets every known run, its latest step and its latest
 * recommendation, then live events.
 */
export class WatchService {
  private readonly latestStep = new Map<string, StepStats>();
  private readonly latestRecommendation = new Map<string, Recommendation>();
  private runs: readonly RunInfo[] = [];
  private readonly subscription: Subscription;
  private readonly closed = new Subject<void>();
  private readonly queues = new Set<WatchQueue>();
  private droppedByEnded = 0;

  /** `queueEvents`: per call, events held for a client that does not read (then oldest step/layer/health dropped). */
  constructor(
    private readonly sources: WatchSources,
    private readonly queueEvents = DEFAULT_LIMITS.watchQueueEvents,
  ) {
    this.subscription = merge(
      sources.runs$.pipe(
        map((runs) => {
          this.runs = runs;
          // A run the sidecar forgot (the runs limit made room) takes its latest step and advice with it.
          const known = new Set(runs.map((r) => r.run));
          for (const map of [this.latestStep, this.latestRecommendation]) for (const run of map.keys()) if (!known.has(run)) map.delete(run);
        }),
      ),
      sources.stats$.pipe(map((s) => void this.latestStep.set(s.run, s))),
      sources.recommendations$.pipe(map((r) => void this.latestRecommendation.set(r.run, r))),
    ).subscribe();
  }

  readonly handler: grpc.handleServerStreamingCall<WatchRequest__Output, RunEvent> = (call) => {
    const wanted = call.request.run;
    if (wanted && !this.runs.some((r) => r.run === wanted)) {
      call.emit('error', {
        code: grpc.status.NOT_FOUND,
        details: `unknown run '${wanted}': known runs are ${this.runs.map((r) => `'${r.run}'`).join(', ') || 'none yet'}`,
      });
      return;
    }
    const mine = (run: string) => !wanted || run === wanted;
    // A client that does not read holds at most queueEvents events here, not an ever-growing grpc-js buffer.
    const queue = new WatchQueue(call, this.queueEvents);
    this.queues.add(queue);
    // An ended run is told as ended (`ended` is not a RunInfo field on the wire: the event says it).
    for (const info of this.runs) if (mine(info.run)) queue.push(info.ended ? { runEnded: runInfoToWire(info) } : { runStarted: runInfoToWire(info) });
    // stats$ replays its latest value on subscribe: send each run's step once.
    const sentStep = new Map<string, number>();
    for (const [run, stats] of this.latestStep) {
      if (!mine(run)) continue;
      queue.push({ step: stepStatsToWire(stats) });
      sentStep.set(run, stats.step);
    }
    // Likewise recommendations$ (which replays one value over all runs): each run's latest once.
    const sentRecommendation = new Map<string, Recommendation>();
    for (const [run, recommendation] of this.latestRecommendation) {
      if (!mine(run)) continue;
      queue.push({ recommendation: recommendationToWire(recommendation) });
      sentRecommendation.set(run, recommendation);
    }

    // What each watcher last heard of each run, to send only what changed.
    const told = new Map(this.runs.map((r) => [r.run, JSON.stringify(runInfoToWire(r))]));
    const subscription = merge(
      this.sources.runs$.pipe(
        map((runs) =>
          runs.flatMap((r): RunEvent[] => {
            if (!mine(r.run)) return [];
            const wire = runInfoToWire(r);
            const text = JSON.stringify(wire);
            const before = told.get(r.run);
            if (before === text) return [];
            told.set(r.run, text);
            if (r.ended) return [{ runEnded: wire }];
            return [before === undefined ? { runStarted: wire } : { runUpdated: wire }];
          }),
        ),
      ),
      this.sources.stats$.pipe(
        filter((s) => mine(s.run) && s.step > (sentStep.get(s.run) ?? -1)),
        map((s): RunEvent[] => {
          sentStep.set(s.run, s.step);
          return [{ step: stepStatsToWire(s) }];
        }),
      ),
      this.sources.layers$.pipe(
        filter((s) => mine(s.run)),
        map((s): RunEvent[] => [{ layers: layerStatsToWire(s) }]),
      ),
      this.sources.health$.pipe(map((h): RunEvent[] => [{ health: healthToWire(h) }])),
      // recommendations$ is fed by stats$ before this call subscribed to it: a microtask
      // later, so the step a recommendation was made at reaches the watcher first.
      this.sources.recommendations$.pipe(
        observeOn(asapScheduler),
        filter((r) => mine(r.run) && sentRecommendation.get(r.run) !== r),
        map((r): RunEvent[] => {
          sentRecommendation.set(r.run, r);
          return [{ recommendation: recommendationToWire(r) }];
        }),
      ),
    )
      .pipe(takeUntil(this.closed))
      .subscribe({
      next: (events) => {
        for (const event of events) queue.push(event);
      },
      complete: () => queue.end(),
    });
    const gone = () => {
      subscription.unsubscribe();
      if (!this.queues.delete(queue)) return;
      this.droppedByEnded += queue.dropped;
      queue.close();
    };
    call.on('cancelled', gone);
    call.on('close', gone);
  };

  stats(): WatchStats {
    let queued = 0;
    let dropped = this.droppedByEnded;
    for (const q of this.queues) {
      queued += q.queued;
      dropped += q.dropped;
    }
    return { watchers: this.queues.size, queued, dropped };
  }

  /** Ends every Watch call (the sidecar is closing). */
  close(): void {
    this.closed.next();
    this.subscription.unsubscribe();
  }
}
