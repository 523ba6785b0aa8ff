"""The public value types: what the handle reports back to the training script."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recommendation:
    """The sidecar's latest batch-size advice for this run (SidecarMessage.recommendation)."""

    run: str
    step: int
    current_global_batch: int
    recommended_global_batch: int
    micro_batch: int
    accumulation_steps: int
    confidence: float
    reason: str


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
