import { describe, expect, it } from 'vitest';
import { lineBatch } from '../../src/cli/line-batch.js';

const microtask = () => new Promise<void>((resolve) => queueMicrotask(resolve));

describe('lineBatch (serve --json: one stdout write per burst of lines)', () => {
  it('writes the lines of one synchronous burst in one call, the same bytes as one write per line', async () => {
    const calls: string[] = [];
    const write = lineBatch((text) => calls.push(text));
    const lines = ['{"type":"step","step":1}', '{"type":"layers"}', '', '{"type":"health"}'];
    for (const line of lines) write(line);
    expect(calls).toEqual([]); // nothing before the burst's end
    await microtask();
    expect(calls).toEqual([lines.map((l) => `${l}\n`).join('')]);
  });

  it('keeps bursts apart and in order, and a line written while flushing goes in the next burst', async () => {
    const calls: string[] = [];
    let write: (line: string) => void = () => {};
    write = lineBatch((text) => {
      calls.push(text);
      if (text === 'a\n') write('during');
    });
    const turn = () => new Promise((resolve) => setImmediate(resolve));
    write('a');
    await turn();
    expect(calls).toEqual(['a\n', 'during\n']);
    write('b');
    write('c');
    await turn();
    expect(calls).toEqual(['a\n', 'during\n', 'b\nc\n']);
  });
});
