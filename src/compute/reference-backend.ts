// The obviously correct backend: float64 products and one float64 running sum per pair,
// straight over the rows. Slow on purpose; every other backend is checked against it.
import { checkGramShapes, heapBlock, type GradientBlock, type OwnedBlock, type ReductionBackend } from './reduction-backend.js';

export function createReferenceBackend(): ReductionBackend {
  return {
    name: 'reference',
    mode: 'plain JavaScript, float64, one sum per pair',
    allocateBlock: (gradients: number, length: number): OwnedBlock => heapBlock(gradients, length),
    async addGram(block: GradientBlock, gram: Float64Array): Promise<void> {
      checkGramShapes(block, gram);
      const { gradients: k, length: n, values } = block;
      for (let i = 0; i < k; i++) {
        for (let j = 0; j < k; j++) {
          let sum = 0;
          for (let c = 0; c < n; c++) sum += (values[i * n + c] as number) * (values[j * n + c] as number);
          gram[i * k + j] = (gram[i * k + j] as number) + sum;
        }
      }
    },
    async sumOfSquares(values: Float32Array): Promise<number> {
      let sum = 0;
      for (const v of values) sum += v * v;
      return sum;
    },
    dispose: () => {},
  };
}
