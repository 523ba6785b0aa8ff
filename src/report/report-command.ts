// `noisescope report <log>`: the run log as an SVG figure (and CSV, and PNG where a renderer exists).
import { writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { UsageError } from '../cli/flags.js';
import { logProblems } from '../cli/replay.js';
import { readRunLog } from '../runlog/read-run-log.js';
import { reportCsv } from './report-csv.js';
import { reportRun } from './report-data.js';
import { renderReportSvg } from './render-report-svg.js';
import { svgToPng } from './svg-to-png.js';

export const REPORT_USAGE = `  noisescope report <log.ndjson> [--out report.svg] [--csv steps.csv] [--png report.png] [--run NAME]
      Draw a logged run as one SVG (B_simple with its interval over steps, the global batch with
      the recommendations, per-layer B_simple of the largest layers) and/or write its steps as CSV;
      '-' writes to stdout. --png renders the SVG with rsvg-convert, inkscape or an ImageMagick that
      reads SVG (the SVG goes beside it unless --out is given). --run picks one run of a log that holds several.`;

const REPORT_OPTIONS = {
  out: { type: 'string' },
  csv: { type: 'string' },
  png: { type: 'string' },
  run: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

export async function report(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args, options: REPORT_OPTIONS, strict: true, allowPositionals: true });
  if (values.help) return void process.stdout.write(`${REPORT_USAGE}\n`);
  if (positionals.length !== 1) throw new UsageError(`report takes one run log file, got ${positionals.length === 0 ? 'none' : positionals.map((p) => `'${p}'`).join(' ')}`);
  const { out, csv, png } = values;
  if (out === undefined && csv === undefined && png === undefined) throw new UsageError('report needs somewhere to write: --out FILE.svg, --csv FILE.csv or --png FILE.png');
  if (png === '-') throw new UsageError("--png needs a file name ('-' is for --out and --csv)");
  if (png !== undefined && out === '-') throw new UsageError('--png renders the SVG from a file: give --out a file name, or leave it out');
  if (out === '-' && csv === '-') throw new UsageError("only one of --out and --csv can write to stdout ('-')");
  const toStdout = out === '-' || csv === '-';
  const say = (line: string) => (toStdout ? process.stderr : process.stdout).write(`${line}\n`);

  const log = await readRunLog(positionals[0]!);
  for (const problem of logProblems(log)) process.stderr.write(`noisescope: ${problem}\n`);
  const run = reportRun(log, values.run);
  const write = async (path: string, content: string, what: string) => {
    if (path === '-') return void process.stdout.write(content);
    await writeFile(path, content);
    say(`noisescope: wrote ${what} ${path} (run ${run.run}, ${run.steps.length} steps)`);
  };

  const svgPath = out ?? png?.replace(/(\.png)?$/i, '.svg');
  if (svgPath !== undefined) {
    const figure = renderReportSvg(run);
    for (const note of figure.notes) process.stderr.write(`noisescope: ${note}\n`);
    await write(svgPath, figure.svg, 'SVG');
  }
  if (csv !== undefined) await write(csv, reportCsv(run), 'CSV');
  // Last: the one output that can fail for want of a program on this machine (the others are written by then).
  if (png !== undefined) {
    const renderer = svgToPng(svgPath!, png);
    say(`noisescope: wrote PNG ${png} (rendered by ${renderer})`);
  }
}
