"""The public value types: what the handle reports back to the training script."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["hold", "increase", "decrease"]


@dataclass(frozen=True)
class LearningRateHint:
    """A heuristic, labelled as one: how the learning rate usually scales with the batch."""

    current_lr: float
    suggested_lr: float
    rule: str  # "linear" (SGD) or "sqrt" (adaptive optimizers)
    note: str


@dataclass(frozen=True)
class Recommendation:
    """The sidecar's batch-size advice for this run (SidecarMessage.recommendation)."""

    run: str
    step: int  # the measured step it was made at
    current_global_batch: int
    recommended_global_batch: int
    micro_batch: int  # examples per device per micro-batch that give the recommended batch
    accumulation_steps: int  # micro-batches per optimizer step on each rank
    confidence: float  # in [0, 1]
    reason: str  # one sentence
    action: Action
    sequence: int  # per run, from 1; a re-delivery repeats it
    noise_scale: float  # the smoothed B_simple it was made from
    interval: tuple[float, float]  # (low, high) of the noise scale; high = inf when unbounded
    target_batch: float  # objective × noise scale, before rounding and bounds
    objective: str  # "balanced" | "time" | "compute"
    steps_factor: float  # predicted optimizer steps to the same loss, recommended ÷ current
    examples_factor: float  # predicted examples to the same loss, recommended ÷ current
    lr_hint: LearningRateHint | None  # None when the learning rate is unknown or the batch holds
    world_size: int
    unix_ms: float  # when the sidecar made it


@dataclass(frozen=True)
class WatchStats:
    """Counters since `watch()`; a snapshot, safe to read from any thread."""

    steps_seen: int  # optimizer steps since watch()
    steps_measured: int  # steps whose norms were measured (every N-th step with gradients)
    messages_sent: int  # RankMessages handed to gRPC (Hello, shards, step ends, Goodbye)
    dropped: int  # measured steps never sent: queue full, no sidecar, or a connection lost
    refusals: int  # messages the sidecar refused (each one a bug on our side)
    queued: int  # measured steps waiting for the sender thread
    connected: bool  # the sidecar has welcomed the current stream
    # per_example_sample="auto" at its floor (s = 4) and still over its budget: 1 in this many steps due is measured
    # (1: every one; README, per_example_sample="auto")
    measuring_one_in: int = 1
