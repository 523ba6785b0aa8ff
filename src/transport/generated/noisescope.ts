import type * as grpc from '@grpc/grpc-js';
import type { EnumTypeDefinition, MessageTypeDefinition } from '@grpc/proto-loader';

import type { BatchPolicy as _noisescope_v1_BatchPolicy, BatchPolicy__Output as _noisescope_v1_BatchPolicy__Output } from './noisescope/v1/BatchPolicy.js';
import type { DenseChunk as _noisescope_v1_DenseChunk, DenseChunk__Output as _noisescope_v1_DenseChunk__Output } from './noisescope/v1/DenseChunk.js';
import type { Estimate as _noisescope_v1_Estimate, Estimate__Output as _noisescope_v1_Estimate__Output } from './noisescope/v1/Estimate.js';
import type { EstimateSpread as _noisescope_v1_EstimateSpread, EstimateSpread__Output as _noisescope_v1_EstimateSpread__Output } from './noisescope/v1/EstimateSpread.js';
import type { FlowControl as _noisescope_v1_FlowControl, FlowControl__Output as _noisescope_v1_FlowControl__Output } from './noisescope/v1/FlowControl.js';
import type { Goodbye as _noisescope_v1_Goodbye, Goodbye__Output as _noisescope_v1_Goodbye__Output } from './noisescope/v1/Goodbye.js';
import type { GradientDiversity as _noisescope_v1_GradientDiversity, GradientDiversity__Output as _noisescope_v1_GradientDiversity__Output } from './noisescope/v1/GradientDiversity.js';
import type { GradientShard as _noisescope_v1_GradientShard, GradientShard__Output as _noisescope_v1_GradientShard__Output } from './noisescope/v1/GradientShard.js';
import type { Health as _noisescope_v1_Health, Health__Output as _noisescope_v1_Health__Output } from './noisescope/v1/Health.js';
import type { Hello as _noisescope_v1_Hello, Hello__Output as _noisescope_v1_Hello__Output } from './noisescope/v1/Hello.js';
import type { Interval as _noisescope_v1_Interval, Interval__Output as _noisescope_v1_Interval__Output } from './noisescope/v1/Interval.js';
import type { Layer as _noisescope_v1_Layer, Layer__Output as _noisescope_v1_Layer__Output } from './noisescope/v1/Layer.js';
import type { LayerCosines as _noisescope_v1_LayerCosines, LayerCosines__Output as _noisescope_v1_LayerCosines__Output } from './noisescope/v1/LayerCosines.js';
import type { LayerEstimate as _noisescope_v1_LayerEstimate, LayerEstimate__Output as _noisescope_v1_LayerEstimate__Output } from './noisescope/v1/LayerEstimate.js';
import type { LayerStats as _noisescope_v1_LayerStats, LayerStats__Output as _noisescope_v1_LayerStats__Output } from './noisescope/v1/LayerStats.js';
import type { LearningRateHint as _noisescope_v1_LearningRateHint, LearningRateHint__Output as _noisescope_v1_LearningRateHint__Output } from './noisescope/v1/LearningRateHint.js';
import type { NoiseScopeClient as _noisescope_v1_NoiseScopeClient, NoiseScopeDefinition as _noisescope_v1_NoiseScopeDefinition } from './noisescope/v1/NoiseScope.js';
import type { PerExampleSqNorms as _noisescope_v1_PerExampleSqNorms, PerExampleSqNorms__Output as _noisescope_v1_PerExampleSqNorms__Output } from './noisescope/v1/PerExampleSqNorms.js';
import type { RankAgreement as _noisescope_v1_RankAgreement, RankAgreement__Output as _noisescope_v1_RankAgreement__Output } from './noisescope/v1/RankAgreement.js';
import type { RankMessage as _noisescope_v1_RankMessage, RankMessage__Output as _noisescope_v1_RankMessage__Output } from './noisescope/v1/RankMessage.js';
import type { Recommendation as _noisescope_v1_Recommendation, Recommendation__Output as _noisescope_v1_Recommendation__Output } from './noisescope/v1/Recommendation.js';
import type { Refusal as _noisescope_v1_Refusal, Refusal__Output as _noisescope_v1_Refusal__Output } from './noisescope/v1/Refusal.js';
import type { RunEvent as _noisescope_v1_RunEvent, RunEvent__Output as _noisescope_v1_RunEvent__Output } from './noisescope/v1/RunEvent.js';
import type { RunInfo as _noisescope_v1_RunInfo, RunInfo__Output as _noisescope_v1_RunInfo__Output } from './noisescope/v1/RunInfo.js';
import type { SidecarMessage as _noisescope_v1_SidecarMessage, SidecarMessage__Output as _noisescope_v1_SidecarMessage__Output } from './noisescope/v1/SidecarMessage.js';
import type { Sketch as _noisescope_v1_Sketch, Sketch__Output as _noisescope_v1_Sketch__Output } from './noisescope/v1/Sketch.js';
import type { SketchSpec as _noisescope_v1_SketchSpec, SketchSpec__Output as _noisescope_v1_SketchSpec__Output } from './noisescope/v1/SketchSpec.js';
import type { SquaredNorms as _noisescope_v1_SquaredNorms, SquaredNorms__Output as _noisescope_v1_SquaredNorms__Output } from './noisescope/v1/SquaredNorms.js';
import type { StepBundle as _noisescope_v1_StepBundle, StepBundle__Output as _noisescope_v1_StepBundle__Output } from './noisescope/v1/StepBundle.js';
import type { StepBundles as _noisescope_v1_StepBundles, StepBundles__Output as _noisescope_v1_StepBundles__Output } from './noisescope/v1/StepBundles.js';
import type { StepEnd as _noisescope_v1_StepEnd, StepEnd__Output as _noisescope_v1_StepEnd__Output } from './noisescope/v1/StepEnd.js';
import type { StepStats as _noisescope_v1_StepStats, StepStats__Output as _noisescope_v1_StepStats__Output } from './noisescope/v1/StepStats.js';
import type { TemperatureChange as _noisescope_v1_TemperatureChange, TemperatureChange__Output as _noisescope_v1_TemperatureChange__Output } from './noisescope/v1/TemperatureChange.js';
import type { WatchRequest as _noisescope_v1_WatchRequest, WatchRequest__Output as _noisescope_v1_WatchRequest__Output } from './noisescope/v1/WatchRequest.js';
import type { Welcome as _noisescope_v1_Welcome, Welcome__Output as _noisescope_v1_Welcome__Output } from './noisescope/v1/Welcome.js';

type SubtypeConstructor<Constructor extends new (...args: any) => any, Subtype> = {
  new(...args: ConstructorParameters<Constructor>): Subtype;
};

export interface ProtoGrpcType {
  noisescope: {
    v1: {
      Action: EnumTypeDefinition
      BatchPolicy: MessageTypeDefinition<_noisescope_v1_BatchPolicy, _noisescope_v1_BatchPolicy__Output>
      DType: EnumTypeDefinition
      DenseChunk: MessageTypeDefinition<_noisescope_v1_DenseChunk, _noisescope_v1_DenseChunk__Output>
      Estimate: MessageTypeDefinition<_noisescope_v1_Estimate, _noisescope_v1_Estimate__Output>
      EstimateSpread: MessageTypeDefinition<_noisescope_v1_EstimateSpread, _noisescope_v1_EstimateSpread__Output>
      FlowControl: MessageTypeDefinition<_noisescope_v1_FlowControl, _noisescope_v1_FlowControl__Output>
      Goodbye: MessageTypeDefinition<_noisescope_v1_Goodbye, _noisescope_v1_Goodbye__Output>
      GradientDiversity: MessageTypeDefinition<_noisescope_v1_GradientDiversity, _noisescope_v1_GradientDiversity__Output>
      GradientShard: MessageTypeDefinition<_noisescope_v1_GradientShard, _noisescope_v1_GradientShard__Output>
      Health: MessageTypeDefinition<_noisescope_v1_Health, _noisescope_v1_Health__Output>
      Hello: MessageTypeDefinition<_noisescope_v1_Hello, _noisescope_v1_Hello__Output>
      Interval: MessageTypeDefinition<_noisescope_v1_Interval, _noisescope_v1_Interval__Output>
      Layer: MessageTypeDefinition<_noisescope_v1_Layer, _noisescope_v1_Layer__Output>
      LayerCosines: MessageTypeDefinition<_noisescope_v1_LayerCosines, _noisescope_v1_LayerCosines__Output>
      LayerEstimate: MessageTypeDefinition<_noisescope_v1_LayerEstimate, _noisescope_v1_LayerEstimate__Output>
      LayerStats: MessageTypeDefinition<_noisescope_v1_LayerStats, _noisescope_v1_LayerStats__Output>
      LearningRateHint: MessageTypeDefinition<_noisescope_v1_LearningRateHint, _noisescope_v1_LearningRateHint__Output>
      Mode: EnumTypeDefinition
      NoiseScope: SubtypeConstructor<typeof grpc.Client, _noisescope_v1_NoiseScopeClient> & { service: _noisescope_v1_NoiseScopeDefinition }
      Objective: EnumTypeDefinition
      PerExampleSqNorms: MessageTypeDefinition<_noisescope_v1_PerExampleSqNorms, _noisescope_v1_PerExampleSqNorms__Output>
      ProtocolVersion: EnumTypeDefinition
      RankAgreement: MessageTypeDefinition<_noisescope_v1_RankAgreement, _noisescope_v1_RankAgreement__Output>
      RankMessage: MessageTypeDefinition<_noisescope_v1_RankMessage, _noisescope_v1_RankMessage__Output>
      Recommendation: MessageTypeDefinition<_noisescope_v1_Recommendation, _noisescope_v1_Recommendation__Output>
      Refusal: MessageTypeDefinition<_noisescope_v1_Refusal, _noisescope_v1_Refusal__Output>
      RunEvent: MessageTypeDefinition<_noisescope_v1_RunEvent, _noisescope_v1_RunEvent__Output>
      RunInfo: MessageTypeDefinition<_noisescope_v1_RunInfo, _noisescope_v1_RunInfo__Output>
      SidecarMessage: MessageTypeDefinition<_noisescope_v1_SidecarMessage, _noisescope_v1_SidecarMessage__Output>
      Sketch: MessageTypeDefinition<_noisescope_v1_Sketch, _noisescope_v1_Sketch__Output>
      SketchSpec: MessageTypeDefinition<_noisescope_v1_SketchSpec, _noisescope_v1_SketchSpec__Output>
      Source: EnumTypeDefinition
      SquaredNorms: MessageTypeDefinition<_noisescope_v1_SquaredNorms, _noisescope_v1_SquaredNorms__Output>
      StepBundle: MessageTypeDefinition<_noisescope_v1_StepBundle, _noisescope_v1_StepBundle__Output>
      StepBundles: MessageTypeDefinition<_noisescope_v1_StepBundles, _noisescope_v1_StepBundles__Output>
      StepEnd: MessageTypeDefinition<_noisescope_v1_StepEnd, _noisescope_v1_StepEnd__Output>
      StepStats: MessageTypeDefinition<_noisescope_v1_StepStats, _noisescope_v1_StepStats__Output>
      TemperatureChange: MessageTypeDefinition<_noisescope_v1_TemperatureChange, _noisescope_v1_TemperatureChange__Output>
      WatchRequest: MessageTypeDefinition<_noisescope_v1_WatchRequest, _noisescope_v1_WatchRequest__Output>
      Welcome: MessageTypeDefinition<_noisescope_v1_Welcome, _noisescope_v1_Welcome__Output>
    }
  }
}

