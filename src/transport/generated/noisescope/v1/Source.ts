// Original file: proto/noisescope/v1/noisescope.proto

export const Source = {
  SOURCE_UNSPECIFIED: 'SOURCE_UNSPECIFIED',
  SOURCE_NONE: 'SOURCE_NONE',
  SOURCE_ACCUMULATION: 'SOURCE_ACCUMULATION',
  SOURCE_DATA_PARALLEL: 'SOURCE_DATA_PARALLEL',
  SOURCE_PER_EXAMPLE: 'SOURCE_PER_EXAMPLE',
  SOURCE_PROBE: 'SOURCE_PROBE',
} as const;

export type Source =
  | 'SOURCE_UNSPECIFIED'
  | 0
  | 'SOURCE_NONE'
  | 1
  | 'SOURCE_ACCUMULATION'
  | 2
  | 'SOURCE_DATA_PARALLEL'
  | 3
  | 'SOURCE_PER_EXAMPLE'
  | 4
  | 'SOURCE_PROBE'
  | 5

export type Source__Output = typeof Source[keyof typeof Source]
