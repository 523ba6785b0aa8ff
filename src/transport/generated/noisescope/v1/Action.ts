// Original file: proto/noisescope/v1/noisescope.proto

export const Action = {
  ACTION_UNSPECIFIED: 'ACTION_UNSPECIFIED',
  ACTION_HOLD: 'ACTION_HOLD',
  ACTION_INCREASE: 'ACTION_INCREASE',
  ACTION_DECREASE: 'ACTION_DECREASE',
} as const;

export type Action =
  | 'ACTION_UNSPECIFIED'
  | 0
  | 'ACTION_HOLD'
  | 1
  | 'ACTION_INCREASE'
  | 2
  | 'ACTION_DECREASE'
  | 3

export type Action__Output = typeof Action[keyof typeof Action]
