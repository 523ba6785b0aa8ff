"""RankMessages from our records, and our types from SidecarMessages (the generated v1 code)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from ._dense import WIRE_DTYPES
from ._meter import LayerInfo, StepRecord
from ._policy import BatchPolicy
from ._types import LearningRateHint, Recommendation
from ._version import __version__
from .v1 import noisescope_pb2 as pb


@dataclass(frozen=True)
class RankInfo:
    """What Hello says about this rank; fixed for the life of a watch."""

    run: str
    rank: int
    world_size: int
    layers: Sequence[LayerInfo]
    dataset_size: int  # 0 = unknown
    every: int
    framework: str
    session: str  # random per watch(); reconnections repeat it, a new watch() of the same run does not
    optimizer: str = ""  # the optimizer's class name: picks the learning-rate hint's rule
    policy: BatchPolicy | None = None  # None: the sidecar's defaults
    # Per-example source on: parameters it cannot cover, left out of `layers`.
    uncovered_layers: Sequence[LayerInfo] = ()
    per_example: bool = False
    per_example_sampled: bool = False  # its per-example sums are sampled estimates (the sidecar skips Cauchy–Schwarz)
    mode: str = "norms"  # or "dense" / "sketch": Hello says MODE_DENSE / MODE_SKETCH, steps carry chunks / sketches
    sketch_sizes: Sequence[int] = ()  # sketch mode: m per layer
    sketch_dtype: str = "fp32"


def hello(info: RankInfo, dropped: int) -> pb.RankMessage:
    return pb.RankMessage(
        hello=pb.Hello(
            protocol_version=pb.PROTOCOL_VERSION_CURRENT,
            run=info.run,
            rank=info.rank,
            world_size=info.world_size,
            layers=[pb.Layer(name=layer.name, numel=layer.numel, kind=layer.kind) for layer in info.layers],
            # The sidecar infers the source per step; per-example says which one this rank can add.
            source=pb.SOURCE_PER_EXAMPLE if info.per_example else pb.SOURCE_UNSPECIFIED,
            per_example_sampled=info.per_example_sampled,
            mode=_MODES.get(info.mode, pb.MODE_NORMS),
            dataset_size=info.dataset_size,
            every=info.every,
            hook_version=__version__,
            framework=info.framework,
            dropped=dropped,
            session=info.session,
            optimizer=info.optimizer,
            policy=batch_policy(info.policy) if info.policy is not None else None,
            uncovered_layers=[pb.Layer(name=layer.name, numel=layer.numel, kind=layer.kind) for layer in info.uncovered_layers],
            sketch=pb.SketchSpec(sizes=info.sketch_sizes, dtype=WIRE_DTYPES[info.sketch_dtype][1])
            if info.mode == "sketch"
            else None,
        )
    )


_MODES = {"norms": pb.MODE_NORMS, "dense": pb.MODE_DENSE, "sketch": pb.MODE_SKETCH}


_OBJECTIVES = {"balanced": pb.OBJECTIVE_BALANCED, "time": pb.OBJECTIVE_TIME, "compute": pb.OBJECTIVE_COMPUTE}


def batch_policy(policy: BatchPolicy) -> pb.BatchPolicy:
    """Unset fields go as 0: the sidecar's default."""
    return pb.BatchPolicy(
        objective=_OBJECTIVES[policy.objective] if policy.objective is not None else pb.OBJECTIVE_UNSPECIFIED,
        min_batch=policy.min_batch or 0,
        max_batch=policy.max_batch or 0,
        max_micro_batch=policy.max_micro_batch or 0,
        max_factor=float(policy.max_factor or 0.0),
        window=policy.window or 0,
        monotone=policy.monotone,
    )


def step_messages(record: StepRecord, world_size: int) -> list[Any]:
    """One GradientShard per micro-batch (dense: a DenseStep, expanded into chunks as it is sent), then the
    StepEnd; a skipped step is its StepEnd alone."""
    local_examples = sum(record.micro_examples)
    end = pb.StepEnd(
        step=record.step,
        local_examples=local_examples,
        # Other ranks' batches are not known here; the sidecar sums local_examples over ranks.
        global_examples=local_examples if world_size == 1 else 0,
        lr=record.lr,
        loss=math.nan,
        unix_ms=record.unix_ms,
    )
    if record.dense is not None and (record.skipped or not record.micro_examples):
        record.dense.release()  # nothing of it is sent
    if record.skipped:
        end.skipped = True
        end.skip_reason = record.skip_reason
        return [pb.RankMessage(step_end=end)]
    if record.dense is not None:
        # Dense: the chunks (framed when sent), then a StepEnd whose norms the sidecar takes from its Gram.
        record.dense.step, record.dense.examples = record.step, record.micro_examples
        end.micro_batches = record.dense.micro_batches
        return [record.dense, pb.RankMessage(step_end=end)]
    messages = [
        pb.RankMessage(
            shard=pb.GradientShard(
                step=record.step,
                micro_batch=j,
                examples=examples,
                sq_norms=pb.SquaredNorms(values=sq_norms),
                per_example=(
                    pb.PerExampleSqNorms(sums=record.per_example_sums[j], sampled=record.per_example_sampled)
                    if record.per_example_sums
                    else None
                ),
            )
        )
        for j, (examples, sq_norms) in enumerate(zip(record.micro_examples, record.micro_sq_norms))
    ]
    end.micro_batches = len(messages)
    end.accumulated_sq_norms.extend(record.accumulated_sq_norms)
    end.reduced_sq_norms.extend(record.reduced_sq_norms)
    end.reduced_is_shard = bool(record.reduced_sq_norms) and record.reduced_is_shard
    messages.append(pb.RankMessage(step_end=end))
    return messages


def bundled(messages: list[Any]) -> list[Any]:
    """A step's norms shards and StepEnd as one StepBundle: gRPC's per-message cost is most of the hook's
    send cost on small models. Dense steps and a lone StepEnd go as they are."""
    if len(messages) < 2 or not all(isinstance(m, pb.RankMessage) for m in messages):
        return messages
    return [pb.RankMessage(bundle=pb.StepBundle(shards=[m.shard for m in messages[:-1]], end=messages[-1].step_end))]


def one_bundle(message: Any) -> pb.StepBundle | None:
    """A step's single message as a StepBundle (a skipped step's lone StepEnd becomes one without shards), or
    None when it cannot join a StepBundles (dense frames, shards sent separately, control messages)."""
    if not isinstance(message, pb.RankMessage):
        return None
    kind = message.WhichOneof("kind")
    if kind == "bundle":
        return message.bundle
    if kind == "step_end":
        return pb.StepBundle(end=message.step_end)
    return None


def several(bundles: list[pb.StepBundle]) -> pb.RankMessage:
    """Several steps' bundles in one message (a sidecar whose Welcome says takes_bundles reads them one by one)."""
    return pb.RankMessage(bundles=pb.StepBundles(bundles=bundles))


def goodbye(reason: str, dropped: int) -> pb.RankMessage:
    return pb.RankMessage(goodbye=pb.Goodbye(reason=reason, dropped=dropped))


# An unspecified action (a sidecar older than the field) is advice to act on nothing.
_ACTIONS = {pb.ACTION_INCREASE: "increase", pb.ACTION_DECREASE: "decrease"}
_OBJECTIVE_NAMES = {value: name for name, value in _OBJECTIVES.items()}


def recommendation(message: pb.Recommendation) -> Recommendation:
    hint = message.lr_hint if message.HasField("lr_hint") else None
    return Recommendation(
        run=message.run,
        step=message.step,
        current_global_batch=message.current_global_batch,
        recommended_global_batch=message.recommended_global_batch,
        micro_batch=message.micro_batch,
        accumulation_steps=message.accumulation_steps,
        confidence=message.confidence,
        reason=message.reason,
        action=_ACTIONS.get(message.action, "hold"),  # type: ignore[arg-type]
        sequence=message.sequence,
        noise_scale=message.noise_scale,
        interval=(message.noise_scale_interval.low, message.noise_scale_interval.high),
        target_batch=message.target_batch,
        objective=_OBJECTIVE_NAMES.get(message.objective, ""),
        steps_factor=message.steps_factor,
        examples_factor=message.examples_factor,
        lr_hint=LearningRateHint(
            current_lr=hint.current_lr, suggested_lr=hint.suggested_lr, rule=hint.rule, note=hint.note
        )
        if hint is not None
        else None,
        world_size=message.world_size,
        unix_ms=message.unix_ms,
    )
