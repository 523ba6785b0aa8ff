// serve --json prints several lines per step (step, layers, health): one write per line is one
// write(2) each (stdout to a file or pipe is synchronous on Linux). Lines written in one
// synchronous burst (a gRPC message's steps) go out together at the microtask's end instead,
// the same bytes in the same order, before any I/O or timer can run.

/** A line writer that joins the lines of one synchronous burst into one `out` call. */
export function lineBatch(out: (text: string) => void): (line: string) => void {
  let pending: string[] = [];
  const flush = () => {
    const text = pending.join('\n') + '\n';
    pending = [];
    out(text);
  };
  return (line: string) => {
    if (pending.push(line) === 1) queueMicrotask(flush);
  };
}
