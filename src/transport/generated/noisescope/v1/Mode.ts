// Original file: proto/noisescope/v1/noisescope.proto

export const Mode = {
  MODE_UNSPECIFIED: 'MODE_UNSPECIFIED',
  MODE_NORMS: 'MODE_NORMS',
  MODE_DENSE: 'MODE_DENSE',
  MODE_SKETCH: 'MODE_SKETCH',
} as const;

export type Mode =
  | 'MODE_UNSPECIFIED'
  | 0
  | 'MODE_NORMS'
  | 1
  | 'MODE_DENSE'
  | 2
  | 'MODE_SKETCH'
  | 3

export type Mode__Output = typeof Mode[keyof typeof Mode]
