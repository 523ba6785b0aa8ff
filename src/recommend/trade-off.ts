/** Optimizer steps and examples to reach the same loss at the recommended batch, each ÷ its value at the current one. */
export interface TradeOff {
  readonly stepsFactor: number;
  readonly examplesFactor: number;
}

/**
 * McCandlish et al. 2018: S = S_min (1 + B_noise/B), E = E_min (1 + B/B_noise),
 * so the ratios need no S_min or E_min. Moving towards B_noise from below cuts
 * steps and costs examples; from above, the reverse.
 */
export function tradeOff(noiseScale: number, currentBatch: number, recommendedBatch: number): TradeOff {
  if (recommendedBatch === currentBatch) return { stepsFactor: 1, examplesFactor: 1 };
  return {
    stepsFactor: (1 + noiseScale / recommendedBatch) / (1 + noiseScale / currentBatch),
    examplesFactor: (1 + recommendedBatch / noiseScale) / (1 + currentBatch / noiseScale),
  };
}
