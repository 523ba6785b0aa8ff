"""BatchPolicy: this run's bounds for the sidecar's batch-size recommendations, sent in Hello."""
from __future__ import annotations

import math
from dataclasses import dataclass

OBJECTIVES = ("balanced", "time", "compute")
# The wire's field widths (uint64 batches that the sidecar reads as exact JS numbers; uint32 others).
_LIMITS = {"min_batch": 2**53 - 1, "max_batch": 2**53 - 1, "max_micro_batch": 2**32 - 1, "window": 2**32 - 1}


@dataclass(frozen=True)
class BatchPolicy:
    """Bounds and preferences for this run's batch-size recommendations.

    Every field left as None takes the sidecar's default (`noisescope serve --objective ...`).

    Attributes:
        objective: "balanced" (the knee, B = B_noise), "time" (B = 4 B_noise: fewer steps) or
            "compute" (B = B_noise / 4: fewer examples).
        min_batch, max_batch: global examples per optimizer step, over all ranks.
        max_micro_batch: examples per device per micro-batch; None keeps the run's own.
        max_factor: at most this factor per change (> 1).
        window: measured steps the evidence must persist before a change (≥ 1).
        monotone: only ever recommend larger batches (a ramp-up).
    """

    objective: str | None = None
    min_batch: int | None = None
    max_batch: int | None = None
    max_micro_batch: int | None = None
    max_factor: float | None = None
    window: int | None = None
    monotone: bool = False

    def __post_init__(self) -> None:
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise ValueError(
                f"BatchPolicy: objective must be one of {', '.join(map(repr, OBJECTIVES))} (or None), "
                f"got {self.objective!r}"
            )
        for name, limit in _LIMITS.items():
            value = getattr(self, name)
            if value is not None and not _positive_int(value, limit):
                raise ValueError(f"BatchPolicy: {name} must be an int from 1 to {limit} (or None), got {value!r}")
        if self.min_batch is not None and self.max_batch is not None and self.max_batch < self.min_batch:
            raise ValueError(
                f"BatchPolicy: max_batch {self.max_batch} is below min_batch {self.min_batch}: "
                "bounds cannot be satisfied"
            )
        factor = self.max_factor
        if factor is not None and not (
            isinstance(factor, (int, float)) and not isinstance(factor, bool) and math.isfinite(factor) and factor > 1
        ):
            raise ValueError(f"BatchPolicy: max_factor must be a finite number above 1 (or None), got {factor!r}")
        if not isinstance(self.monotone, bool):
            raise ValueError(f"BatchPolicy: monotone must be True or False, got {self.monotone!r}")


def _positive_int(value: object, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= limit
