"""Follows the sidecar's batch-size advice by changing the gradient-accumulation count at step boundaries.

The least invasive way to change the global batch: the data loader keeps its micro-batch and
each optimizer step accumulates a different number of them. A recommendation (delivered on
the sender thread) waits until the optimizer's step post-hook, so a step never mixes two
counts; the meter is told the new count at once, so the next step is measured in full.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ._policy import BatchPolicy
from ._types import LearningRateHint, Recommendation

if TYPE_CHECKING:
    import torch

    from ._meter import Meter

logger = logging.getLogger("noisescope")


@dataclass(frozen=True)
class AccumulationChange:
    """One change the helper made."""

    step: int  # the first optimizer step (counted as the hook counts them, from 0) run with the new count
    accumulation_steps: int  # micro-batches per optimizer step on this rank, from `step` on
    global_batch: int  # micro-batch × world size × accumulation_steps
    previous_global_batch: int
    lr: float  # the first parameter group's learning rate from `step` on
    sequence: int  # the recommendation that asked for it
    reason: str  # its one-sentence reason


def fewest_steps(world_size: int, per_example: bool = False) -> int:
    """One rank needs two micro-batches per step unless per-example norms give the second batch scale."""
    return 2 if world_size == 1 and not per_example else 1


def check_bounds(
    *, steps: int, micro_batch: int, world_size: int, policy: BatchPolicy | None, per_example: bool = False
) -> None:
    """ValueError naming the argument that cannot work: the helper's checks at start."""
    for name, value in (("steps", steps), ("micro_batch", micro_batch)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"adaptive_accumulation: {name} must be an int, got {type(value).__name__}")
    fewest = fewest_steps(world_size, per_example)
    if steps < fewest:
        why = (
            " (one rank without per-example norms needs two micro-batches per step to measure the noise scale)"
            if fewest == 2
            else ""
        )
        raise ValueError(f"adaptive_accumulation: steps must be ≥ {fewest}{why}, got {steps}")
    if micro_batch < 1:
        raise ValueError(f"adaptive_accumulation: micro_batch must be ≥ 1, got {micro_batch}")
    if policy is not None and policy.max_batch is not None and micro_batch * world_size * fewest > policy.max_batch:
        raise ValueError(
            f"adaptive_accumulation: bounds cannot be satisfied: the smallest global batch this helper can run, "
            f"micro_batch {micro_batch} × world size {world_size} × {fewest} accumulation steps = "
            f"{micro_batch * world_size * fewest}, exceeds the policy's max_batch {policy.max_batch}"
        )


class AdaptiveAccumulation:
    """The accumulation count to train with, changed at step boundaries when the sidecar advises.

    Use it in the training loop::

        acc = ns.adaptive_accumulation(steps=2, micro_batch=16)
        for x, y in loader:                       # micro-batches of 16
            (loss_fn(model(x), y) / acc.steps).backward()
            if acc.micro_batch_done():            # the optimizer step is complete
                optimizer.step()
                optimizer.zero_grad()

    Made by `Watch.adaptive_accumulation`; `remove()` (or the watch's) stops following advice
    and keeps the current count. It never raises into the training loop: an internal error is
    logged once and the count stays where it is.
    """

    def __init__(
        self,
        *,
        optimizer: torch.optim.Optimizer,
        steps: int,
        micro_batch: int,
        world_size: int,
        per_example: bool = False,
        policy: BatchPolicy | None,
        apply_lr_hint: bool,
        scheduler: Any,
        meter: Meter | None,
    ) -> None:
        self._optimizer = optimizer
        self._steps = steps
        self._micro_batch = micro_batch
        self._world_size = world_size
        self._fewest = fewest_steps(world_size, per_example)
        self._policy = policy
        self._apply_lr_hint = apply_lr_hint
        self._scheduler = scheduler
        self._meter = meter
        self._done = 0  # micro-batches of the current optimizer step so far
        self._lock = threading.Lock()
        self._pending: Recommendation | None = None
        self._failed = False
        self._removed = False
        self._unregister: list[Callable[[], None]] = []
        self.history: list[AccumulationChange] = []
        if meter is not None:
            meter.expect_micro_batches(steps)

    def _attach(self, on_recommendation: Callable[[Callable[[Recommendation], None]], Callable[[], None]]) -> None:
        from ._meter import _Hook

        handle = self._optimizer.register_step_post_hook(_Hook(self._at_step_end))
        self._unregister.append(handle.remove)
        self._unregister.append(on_recommendation(self._offer))

    # ------------------------------------------------------------ public surface

    @property
    def steps(self) -> int:
        """Micro-batches in the current optimizer step (divide each micro-batch's loss by it)."""
        return self._steps

    @property
    def micro_batch(self) -> int:
        return self._micro_batch

    @property
    def global_batch(self) -> int:
        """Examples per optimizer step over all ranks (full micro-batches)."""
        return self._micro_batch * self._world_size * self._steps

    def micro_batch_done(self) -> bool:
        """Call after each backward; True when that micro-batch completes the step: call optimizer.step()."""
        self._done += 1
        if self._done >= self._steps:
            self._done = 0
            return True
        return False

    def remove(self) -> None:
        """Stops following recommendations; the current count stays. Idempotent."""
        self._removed = True
        unregister, self._unregister = self._unregister, []
        for undo in unregister:
            undo()

    def __repr__(self) -> str:
        return (
            f"<noisescope.AdaptiveAccumulation steps={self._steps} micro_batch={self._micro_batch} "
            f"global_batch={self.global_batch} changes={len(self.history)}{' removed' if self._removed else ''}>"
        )

    # ------------------------------------------------------------ internals

    def _offer(self, recommendation: Recommendation) -> None:
        """Sender thread: the latest advice waits for the next step boundary."""
        with self._lock:
            self._pending = recommendation

    def _at_step_end(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._failed:
            return None
        try:
            with self._lock:
                recommendation, self._pending = self._pending, None
            if recommendation is not None:
                self._follow(recommendation)
        except Exception:  # never into the training loop
            self._failed = True
            logger.exception(
                "noisescope: internal error in the adaptive accumulation helper; it keeps %d accumulation "
                "steps from now on (training continues). Please report this with the traceback.",
                self._steps,
            )
        return None

    def _follow(self, recommendation: Recommendation) -> None:
        if recommendation.action not in ("increase", "decrease"):
            return
        unit = self._micro_batch * self._world_size
        current = unit * self._steps
        # Advice made for another batch (e.g. before our last change) is stale. A short last
        # micro-batch (drop_last=False) still counts as ours: no other count lands in this range.
        if not current - unit < recommendation.current_global_batch <= current:
            return
        if recommendation.micro_batch == self._micro_batch and recommendation.accumulation_steps >= 1:
            steps = recommendation.accumulation_steps
        else:  # another micro-batch was advised: ours stays, the count gets as close as it can
            steps = max(1, round(recommendation.recommended_global_batch / unit))
        steps = self._bounded(steps)
        if steps == self._steps or (steps > self._steps) != (recommendation.action == "increase"):
            return
        previous = self.global_batch
        if self._apply_lr_hint and recommendation.lr_hint is not None:
            exact = unit * steps == recommendation.recommended_global_batch
            self._scale_lr(recommendation.lr_hint, ratio=steps / self._steps, exact=exact)
        self._steps = steps
        if self._meter is not None:
            self._meter.expect_micro_batches(steps)
        change = AccumulationChange(
            step=self._meter.steps_seen if self._meter is not None else 0,
            accumulation_steps=steps,
            global_batch=self.global_batch,
            previous_global_batch=previous,
            lr=_first_lr(self._optimizer),
            sequence=recommendation.sequence,
            reason=recommendation.reason,
        )
        self.history.append(change)
        logger.info(
            "noisescope: gradient accumulation %d → %d (global batch %d → %d) from step %d: %s",
            previous // unit,
            steps,
            previous,
            change.global_batch,
            change.step,
            recommendation.reason,
        )

    def _bounded(self, steps: int) -> int:
        """Within the policy's bounds and at least the fewest steps; max_batch wins a conflict."""
        unit = self._micro_batch * self._world_size
        policy = self._policy
        lowest = self._fewest
        if policy is not None and policy.min_batch is not None:
            lowest = max(lowest, -(-policy.min_batch // unit))
        steps = max(steps, lowest)
        if policy is not None and policy.max_batch is not None:
            steps = min(steps, max(policy.max_batch // unit, self._fewest))
        return steps

    def _scale_lr(self, hint: LearningRateHint, *, ratio: float, exact: bool) -> None:
        """Every group's learning rate (and the scheduler's base_lrs) × the hint's factor; all or nothing."""
        factor = _lr_factor(hint, ratio, exact=exact)
        if factor is None:
            logger.warning("noisescope: unusable learning-rate hint %s; the learning rate is left as it is", hint)
            return
        scheduler = self._scheduler
        base_lrs = [base * factor for base in scheduler.base_lrs] if scheduler is not None else None
        groups = self._optimizer.param_groups
        plain = [None if hasattr(g["lr"], "mul_") else g["lr"] * factor for g in groups]
        for group, lr in zip(groups, plain):
            if lr is None:
                group["lr"].mul_(factor)  # a tensor learning rate (capturable optimizers) stays the same tensor
            else:
                group["lr"] = lr
        if scheduler is not None:
            scheduler.base_lrs = base_lrs


def _lr_factor(hint: LearningRateHint, ratio: float, *, exact: bool) -> float | None:
    """suggested/current when the advised batch was applied as is; else the hint's rule on the batch actually applied."""
    if exact and hint.current_lr > 0 and math.isfinite(hint.current_lr) and math.isfinite(hint.suggested_lr):
        factor = hint.suggested_lr / hint.current_lr
    elif hint.rule == "linear":
        factor = ratio
    elif hint.rule == "sqrt":
        factor = math.sqrt(ratio)
    else:
        return None
    return factor if math.isfinite(factor) and factor > 0 else None


def _first_lr(optimizer: Any) -> float:
    try:
        return float(optimizer.param_groups[0]["lr"])
    except (KeyError, IndexError, TypeError, ValueError):
        return math.nan
