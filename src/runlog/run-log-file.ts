import { mkdir, open, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { RUN_LOG_SCHEMA_VERSION, type LogGapRecord, type RunLogRecord } from './schema.js';

/** Bytes queued but not yet written, shared by every file of one writer. */
export interface LogBuffer {
  queued: number;
  readonly max: number;
}

export interface LogCounters {
  /** Lines handed to the file system. */
  written: number;
  /** Lines dropped because the buffer was full (each is then counted in a log-gap record). */
  dropped: number;
}

// One write call carries at most this much, so a backlog drains in steps.
const MAX_CHUNK_BYTES = 1 << 20;

/**
 * One run's log file: records are queued in memory (bounded by the shared
 * buffer) and written in order by one asynchronous drain loop, so the
 * subscriber that appends never waits on the disk. A full buffer drops lines
 * and counts them; the count is written as a log-gap record once there is
 * room again. The first write error stops this file for good and is reported once.
 */
export class RunLogFile {
  private readonly queue: string[] = [];
  private handle: FileHandle | null = null;
  private draining = false;
  private drained: Promise<void> = Promise.resolve();
  private failed = false;
  private gap: { dropped: number; fromUnixMs: number; toUnixMs: number } | null = null;

  constructor(
    readonly run: string,
    readonly path: string,
    private readonly buffer: LogBuffer,
    private readonly counters: LogCounters,
    private readonly onFailure: (error: unknown) => void,
  ) {}

  append(record: RunLogRecord): void {
    if (this.failed) return;
    const line = `${JSON.stringify(record)}\n`;
    // A pending gap goes in first, so it stays where the lines were lost; both fit or neither goes.
    const gapLine = this.gap ? this.gapLine() : '';
    if (this.buffer.queued + Buffer.byteLength(gapLine) + Buffer.byteLength(line) > this.buffer.max) {
      this.noteDrop(record.unixMs);
      return;
    }
    if (gapLine) this.enqueueGap(true);
    this.enqueue(line, true);
  }

  /** Resolves when everything queued so far is written (or the file has failed). */
  async flush(): Promise<void> {
    this.enqueueGap(true);
    while (this.draining) await this.drained;
  }

  /** Flushes and closes the file; a later append reopens it. */
  async release(): Promise<void> {
    await this.flush();
    const handle = this.handle;
    if (this.draining || !handle) return;
    this.handle = null;
    await handle.close().catch(() => {}); // written data is already in the kernel's hands
  }

  private enqueue(line: string, force: boolean): boolean {
    const bytes = Buffer.byteLength(line);
    if (!force && this.buffer.queued + bytes > this.buffer.max) return false;
    this.buffer.queued += bytes;
    this.queue.push(line);
    if (!this.draining) {
      this.draining = true;
      this.drained = this.drain();
    }
    return true;
  }

  private noteDrop(unixMs: number): void {
    this.counters.dropped++;
    if (this.gap) {
      this.gap.dropped++;
      this.gap.toUnixMs = unixMs;
    } else {
      this.gap = { dropped: 1, fromUnixMs: unixMs, toUnixMs: unixMs };
    }
  }

  private gapLine(): string {
    const record: LogGapRecord = { v: RUN_LOG_SCHEMA_VERSION, type: 'log-gap', unixMs: Date.now(), run: this.run, ...this.gap! };
    return `${JSON.stringify(record)}\n`;
  }

  private enqueueGap(force: boolean): void {
    if (this.gap && this.enqueue(this.gapLine(), force)) this.gap = null;
  }

  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        this.handle ??= await openForAppend(this.path);
        let lines = 0;
        let bytes = 0;
        while (lines < this.queue.length && (lines === 0 || bytes < MAX_CHUNK_BYTES)) bytes += Buffer.byteLength(this.queue[lines++]!);
        await writeAll(this.handle, Buffer.from(this.queue.slice(0, lines).join(''), 'utf8'));
        this.queue.splice(0, lines);
        this.buffer.queued -= bytes;
        this.counters.written += lines;
        if (this.gap) this.enqueueGap(false);
      }
    } catch (error) {
      this.fail(error);
    } finally {
      // Synchronously after the last check of the queue: an append from here on starts a new drain.
      this.draining = false;
    }
  }

  private fail(error: unknown): void {
    this.failed = true;
    for (const line of this.queue) this.buffer.queued -= Buffer.byteLength(line);
    this.queue.length = 0;
    this.gap = null;
    const handle = this.handle;
    this.handle = null;
    void handle?.close().catch(() => {});
    this.onFailure(error);
  }
}

/** Opens for appending; a torn last line (a crash mid-write) is ended first so the next record starts on its own line. */
async function openForAppend(path: string): Promise<FileHandle> {
  await mkdir(dirname(path), { recursive: true });
  const handle = await open(path, 'a');
  try {
    const { size } = await handle.stat();
    if (size > 0 && !(await endsWithNewline(path, size))) await writeAll(handle, Buffer.from('\n'));
    return handle;
  } catch (error) {
    await handle.close().catch(() => {});
    throw error;
  }
}

async function endsWithNewline(path: string, size: number): Promise<boolean> {
  const reader = await open(path, 'r');
  try {
    const last = Buffer.alloc(1);
    await reader.read(last, 0, 1, size - 1);
    return last[0] === 0x0a;
  } finally {
    await reader.close();
  }
}

async function writeAll(handle: FileHandle, data: Buffer): Promise<void> {
  let rest = data;
  while (rest.length > 0) {
    const { bytesWritten } = await handle.write(rest);
    rest = rest.subarray(bytesWritten);
  }
}
