// Original file: proto/noisescope/v1/noisescope.proto

export const DType = {
  DTYPE_UNSPECIFIED: 'DTYPE_UNSPECIFIED',
  DTYPE_F32: 'DTYPE_F32',
  DTYPE_F16: 'DTYPE_F16',
  DTYPE_BF16: 'DTYPE_BF16',
} as const;

export type DType =
  | 'DTYPE_UNSPECIFIED'
  | 0
  | 'DTYPE_F32'
  | 1
  | 'DTYPE_F16'
  | 2
  | 'DTYPE_BF16'
  | 3

export type DType__Output = typeof DType[keyof typeof DType]
