"""AMP's GradScaler: its loss scale, divided out of the measured norms, and the steps it skips.

Backward runs on the scaled loss S·L, so every gradient the hooks see (and every squared norm)
carries S (S²). The scale is read at the optimizer step, which GradScaler.step() calls before
update() can change it. A step whose gradients hold inf/NaN never calls optimizer.step(): the
instance's `step` is wrapped (restored on remove) to tell the meter, which sends it as skipped.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

logger = logging.getLogger("noisescope")

SKIP_REASON = "AMP GradScaler skipped the optimizer step: inf/NaN in the scaled gradients (the scale backs off)"


def check_scaler(scaler: Any) -> None:
    """watch(scaler=...): a torch.amp.GradScaler (or torch.cuda.amp's), else TypeError naming it."""
    if not all(callable(getattr(scaler, name, None)) for name in ("scale", "step", "update", "is_enabled")):
        raise TypeError(f"noisescope.watch: scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}")


def loss_scale(scaler: Any) -> Callable[[], Any]:
    """A reader of the scale the last backward ran with: a float on the CPU, a 0-dim tensor (no sync) elsewhere."""

    def read() -> Any:
        if not scaler.is_enabled():
            return None
        scale = getattr(scaler, "_scale", None)  # None until the first scaler.scale(loss)
        if scale is None:
            return None
        return float(scale.item()) if scale.device.type == "cpu" else scale

    return read


class SkipTap:
    """Wraps `scaler.step` on the instance: a call that did not reach optimizer.step() is a skipped step."""

    def __init__(self, scaler: Any, optimizer: Any, meter: Any, guard: Any) -> None:
        self._scaler = scaler
        self._optimizer = optimizer
        self._meter = meter
        self._guard = guard
        self._wrapper: Callable[..., Any] | None = None
        self._had_own = False  # the instance already had a `step` attribute of its own (someone else's wrapper)
        self._own: Any = None

    def attach(self) -> None:
        scaler, meter = self._scaler, self._meter
        self._had_own = "step" in vars(scaler)
        self._own = vars(scaler).get("step")
        original = scaler.step

        def step(optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            seen = meter.steps_seen
            result = original(optimizer, *args, **kwargs)  # the user's errors are theirs: not caught
            try:
                if optimizer is self._optimizer and meter.steps_seen == seen and scaler.is_enabled():
                    meter.skip_step(SKIP_REASON)
            except Exception as error:
                self._guard.trip("the GradScaler step wrapper", error)
            return result

        self._wrapper = step
        scaler.step = step

    def detach(self) -> None:
        """Puts back what the instance had; leaves alone a wrapper someone placed over ours."""
        if self._wrapper is None:
            return
        if vars(self._scaler).get("step") is self._wrapper:
            if self._had_own:
                self._scaler.step = self._own
            else:
                del self._scaler.step
        else:
            logger.info("noisescope: GradScaler.step was wrapped again after watch(); that wrapper is left in place")
        self._wrapper = None
