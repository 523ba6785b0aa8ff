// Original file: proto/noisescope/v1/noisescope.proto

import type * as grpc from '@grpc/grpc-js'
import type { MethodDefinition } from '@grpc/proto-loader'
import type { RankMessage as _noisescope_v1_RankMessage, RankMessage__Output as _noisescope_v1_RankMessage__Output } from '../../noisescope/v1/RankMessage.js';
import type { RunEvent as _noisescope_v1_RunEvent, RunEvent__Output as _noisescope_v1_RunEvent__Output } from '../../noisescope/v1/RunEvent.js';
import type { SidecarMessage as _noisescope_v1_SidecarMessage, SidecarMessage__Output as _noisescope_v1_SidecarMessage__Output } from '../../noisescope/v1/SidecarMessage.js';
import type { WatchRequest as _noisescope_v1_WatchRequest, WatchRequest__Output as _noisescope_v1_WatchRequest__Output } from '../../noisescope/v1/WatchRequest.js';

export interface NoiseScopeClient extends grpc.Client {
  Attach(metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientDuplexStream<_noisescope_v1_RankMessage, _noisescope_v1_SidecarMessage__Output>;
  Attach(options?: grpc.CallOptions): grpc.ClientDuplexStream<_noisescope_v1_RankMessage, _noisescope_v1_SidecarMessage__Output>;
  attach(metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientDuplexStream<_noisescope_v1_RankMessage, _noisescope_v1_SidecarMessage__Output>;
  attach(options?: grpc.CallOptions): grpc.ClientDuplexStream<_noisescope_v1_RankMessage, _noisescope_v1_SidecarMessage__Output>;
  
  Watch(argument: _noisescope_v1_WatchRequest, metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientReadableStream<_noisescope_v1_RunEvent__Output>;
  Watch(argument: _noisescope_v1_WatchRequest, options?: grpc.CallOptions): grpc.ClientReadableStream<_noisescope_v1_RunEvent__Output>;
  watch(argument: _noisescope_v1_WatchRequest, metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientReadableStream<_noisescope_v1_RunEvent__Output>;
  watch(argument: _noisescope_v1_WatchRequest, options?: grpc.CallOptions): grpc.ClientReadableStream<_noisescope_v1_RunEvent__Output>;
  
}

export interface NoiseScopeHandlers extends grpc.UntypedServiceImplementation {
  Attach: grpc.handleBidiStreamingCall<_noisescope_v1_RankMessage__Output, _noisescope_v1_SidecarMessage>;
  
  Watch: grpc.handleServerStreamingCall<_noisescope_v1_WatchRequest__Output, _noisescope_v1_RunEvent>;
  
}

export interface NoiseScopeDefinition extends grpc.ServiceDefinition {
  Attach: MethodDefinition<_noisescope_v1_RankMessage, _noisescope_v1_SidecarMessage, _noisescope_v1_RankMessage__Output, _noisescope_v1_SidecarMessage__Output>
  Watch: MethodDefinition<_noisescope_v1_WatchRequest, _noisescope_v1_RunEvent, _noisescope_v1_WatchRequest__Output, _noisescope_v1_RunEvent__Output>
}
