// Original file: proto/noisescope/v1/noisescope.proto

export const Objective = {
  OBJECTIVE_UNSPECIFIED: 'OBJECTIVE_UNSPECIFIED',
  OBJECTIVE_BALANCED: 'OBJECTIVE_BALANCED',
  OBJECTIVE_TIME: 'OBJECTIVE_TIME',
  OBJECTIVE_COMPUTE: 'OBJECTIVE_COMPUTE',
} as const;

export type Objective =
  | 'OBJECTIVE_UNSPECIFIED'
  | 0
  | 'OBJECTIVE_BALANCED'
  | 1
  | 'OBJECTIVE_TIME'
  | 2
  | 'OBJECTIVE_COMPUTE'
  | 3

export type Objective__Output = typeof Objective[keyof typeof Objective]
