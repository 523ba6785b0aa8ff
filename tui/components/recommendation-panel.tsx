import { Box } from 'ink';
import type { RunView } from '../model.js';
import { recommendationLines } from '../recommendation.js';
import { Spans } from './toned.js';

export interface RecommendationPanelProps {
  readonly run: RunView | null;
  readonly width: number;
  /** False when the sources have no recommendations$ (the panel says so instead of waiting). */
  readonly recommending: boolean;
}

/** The policy's latest advice for the run: action, batch and how, why, what it buys, the lr hint. */
export function RecommendationPanel({ run, width, recommending }: RecommendationPanelProps) {
  return (
    <Box flexDirection="column" width={width}>
      {recommendationLines(run, width, recommending).map((spans, i) => (
        <Spans key={i} spans={spans} />
      ))}
    </Box>
  );
}
