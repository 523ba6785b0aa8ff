import type { StepStats } from '../../src/types.js';
import { summarizeDiversity, diversitySpans } from '../diversity.js';
import { fitSpans } from '../fit.js';
import { Spans } from './toned.js';

/** Whether the dashboard gives the step a diversity line (it takes a line from the chart). */
export const hasDiversity = (latest: StepStats | null): boolean => summarizeDiversity(latest?.diversity) !== null;

/** How alike the latest step's micro-batch gradients were; nothing for steps without diversity (norms mode). */
export function DiversityLine({ latest, width }: { readonly latest: StepStats | null; readonly width: number }) {
  const summary = summarizeDiversity(latest?.diversity);
  return summary ? <Spans spans={fitSpans(diversitySpans(summary), width)} /> : null;
}
