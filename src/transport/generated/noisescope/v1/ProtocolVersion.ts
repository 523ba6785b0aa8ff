// Original file: proto/noisescope/v1/noisescope.proto

export const ProtocolVersion = {
  PROTOCOL_VERSION_UNSPECIFIED: 'PROTOCOL_VERSION_UNSPECIFIED',
  PROTOCOL_VERSION_CURRENT: 'PROTOCOL_VERSION_CURRENT',
} as const;

export type ProtocolVersion =
  | 'PROTOCOL_VERSION_UNSPECIFIED'
  | 0
  | 'PROTOCOL_VERSION_CURRENT'
  | 1

export type ProtocolVersion__Output = typeof ProtocolVersion[keyof typeof ProtocolVersion]
