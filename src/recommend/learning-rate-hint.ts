import type { LearningRateHint } from '../types.js';

type Family = 'sgd' | 'adaptive' | 'unknown';

// SGD and its relatives (ASGD, LARS, any *SGD*): the linear rule was measured for them.
const SGD_FAMILY = /sgd|^lars$/i;
// Adam-style and other per-parameter adaptive optimizers, by torch / common library class names.
const ADAPTIVE = /adam|adagrad|adadelta|adafactor|rmsprop|lamb|lion|adan|sophia/i;

function family(name: string): Family {
  if (SGD_FAMILY.test(name)) return 'sgd';
  if (ADAPTIVE.test(name)) return 'adaptive';
  return 'unknown';
}

/**
 * How the learning rate usually scales with the batch: linearly for SGD
 * (Goyal et al. 2017), with the square root for Adam-style optimizers
 * (Malladi et al. 2022), and the square root, the milder guess, when the
 * optimizer is unknown. Null when the learning rate is unknown or the batch holds.
 */
export function learningRateHint(
  optimizer: string | null,
  lr: number | null,
  currentBatch: number,
  recommendedBatch: number,
): LearningRateHint | null {
  if (lr === null || !Number.isFinite(lr) || !(lr > 0) || recommendedBatch === currentBatch) return null;
  const ratio = recommendedBatch / currentBatch;
  if (!(Number.isFinite(ratio) && ratio > 0)) return null;
  // Whatever the hook sent that is not a name counts as unknown.
  const name = typeof optimizer === 'string' ? optimizer.trim() : '';
  const kind = family(name);
  if (kind === 'sgd') {
    return {
      currentLr: lr,
      suggestedLr: lr * ratio,
      rule: 'linear',
      note: `A heuristic: scale the learning rate with the batch (linear rule for SGD, Goyal et al. 2017).`,
    };
  }
  const why =
    kind === 'adaptive'
      ? `square-root rule for Adam-style optimizers such as ${name}, Malladi et al. 2022`
      : `square-root rule, Malladi et al. 2022, as the milder guess: the optimizer ${name === '' ? 'is unknown' : `${name} is not one we recognise`}`;
  return {
    currentLr: lr,
    suggestedLr: lr * Math.sqrt(ratio),
    rule: 'sqrt',
    note: `A heuristic: scale the learning rate with the square root of the batch (${why}).`,
  };
}
