"""RankMessages from our records, and our types from SidecarMessages (the generated v1 code)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ._meter import LayerInfo, StepRecord
from ._types import Recommendation
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


def hello(info: RankInfo, dropped: int) -> pb.RankMessage:
    return pb.RankMessage(
        hello=pb.Hello(
            protocol_version=pb.PROTOCOL_VERSION_CURRENT,
            run=info.run,
            rank=info.rank,
            world_size=info.world_size,
            layers=[pb.Layer(name=layer.name, numel=layer.numel, kind=layer.kind) for layer in info.layers],
            source=pb.SOURCE_UNSPECIFIED,  # the sidecar infers it per step
            mode=pb.MODE_NORMS,
            dataset_size=info.dataset_size,
            every=info.every,
            hook_version=__version__,
            framework=info.framework,
            dropped=dropped,
            session=info.session,
        )
    )


def step_messages(record: StepRecord, world_size: int) -> list[pb.RankMessage]:
    """One GradientShard per micro-batch, then the StepEnd; a skipped step is its StepEnd alone."""
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
    if record.skipped:
        end.skipped = True
        end.skip_reason = record.skip_reason
        return [pb.RankMessage(step_end=end)]
    messages = [
        pb.RankMessage(
            shard=pb.GradientShard(
                step=record.step,
                micro_batch=j,
                examples=examples,
                sq_norms=pb.SquaredNorms(values=sq_norms),
            )
        )
        for j, (examples, sq_norms) in enumerate(zip(record.micro_examples, record.micro_sq_norms))
    ]
    end.micro_batches = len(messages)
    end.accumulated_sq_norms.extend(record.accumulated_sq_norms)
    messages.append(pb.RankMessage(step_end=end))
    return messages


def goodbye(reason: str, dropped: int) -> pb.RankMessage:
    return pb.RankMessage(goodbye=pb.Goodbye(reason=reason, dropped=dropped))


def recommendation(message: pb.Recommendation) -> Recommendation:
    return Recommendation(
        run=message.run,
        step=message.step,
        current_global_batch=message.current_global_batch,
        recommended_global_batch=message.recommended_global_batch,
        micro_batch=message.micro_batch,
        accumulation_steps=message.accumulation_steps,
        confidence=message.confidence,
        reason=message.reason,
    )
