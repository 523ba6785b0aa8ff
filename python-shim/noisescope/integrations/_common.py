"""What the framework callbacks share: keyword checks, the watch's wiring, and the plan they log."""
from __future__ import annotations

import inspect
import logging
from typing import Any, Callable

from .._watch import watch

logger = logging.getLogger("noisescope")

# watch() keywords a callback passes on (all but what the framework supplies), read from watch itself.
WATCH_KEYWORDS = frozenset(inspect.signature(watch).parameters) - {"model", "optimizer", "dataset_size", "scaler"}


def check_callback_arguments(
    owner: str, on_recommendation: Callable[..., None] | None, watch_kwargs: dict[str, Any]
) -> None:
    """Eager checks at construction, naming the argument (the watch itself starts with training)."""
    if on_recommendation is not None and not callable(on_recommendation):
        raise TypeError(f"{owner}: on_recommendation must be callable or None, got {type(on_recommendation).__name__}")
    unknown = sorted(set(watch_kwargs) - WATCH_KEYWORDS)
    if unknown:
        raise TypeError(
            f"{owner}: unknown keyword {', '.join(map(repr, unknown))}; it passes on these to noisescope.watch: "
            f"{', '.join(sorted(WATCH_KEYWORDS))} (model, optimizer, dataset_size and scaler come from the trainer)"
        )


def dataset_size_of(loader: Any) -> int | None:
    """The training set's size, when the data loader's dataset has one (an iterable dataset has none)."""
    try:
        size = len(loader.dataset)
    except Exception:
        return None
    return size if isinstance(size, int) and size > 0 else None


def start_watch(
    owner: str,
    model: Any,
    optimizer: Any,
    *,
    scaler: Any,
    dataset_size: int | None,
    accumulation_steps: int,
    micro_batch: int | None,
    world_size: int,
    on_recommendation: Callable[..., None] | None,
    watch_kwargs: dict[str, Any],
    first_step: int = 0,
) -> Any:
    """noisescope.watch with what the trainer knows; returns the Watch, or None where it could not start.

    `first_step` is the trainer's step count at the start (non-zero when it resumed from a checkpoint): the
    run's steps go on from it, so a resumed run's log continues, unless the user passed first_step.
    Never raises into training: a failure to start is one warning."""
    import noisescope

    kwargs = dict(watch_kwargs)
    if "first_step" not in kwargs and isinstance(first_step, int) and first_step > 0:
        kwargs["first_step"] = first_step
    try:
        ns = noisescope.watch(model, optimizer, scaler=scaler, dataset_size=dataset_size, **kwargs)
    except Exception as error:
        logger.warning("noisescope: %s could not start watching (%s: %s); training continues unwatched", owner,
                       type(error).__name__, error)
        return None
    if on_recommendation is not None:
        ns.on_recommendation(on_recommendation)
    meter = ns._meter
    if meter is not None:
        meter.expect_micro_batches(accumulation_steps)  # the accumulated norm at the right backward from step 0
    global_batch = micro_batch * accumulation_steps * world_size if micro_batch else None
    logger.info(
        "noisescope: %s: micro-batch %s × accumulation %d × world %d = global batch %s, dataset %s, lr %s; "
        "recommendations are %s",
        owner,
        micro_batch if micro_batch else "(from each batch)",
        accumulation_steps,
        world_size,
        global_batch if global_batch else "(from each batch)",
        dataset_size if dataset_size else "unknown",
        _learning_rate(optimizer),
        "passed to on_recommendation" if on_recommendation is not None else "kept in .recommendation (not applied)",
    )
    return ns


def _learning_rate(optimizer: Any) -> Any:
    try:
        return optimizer.param_groups[0]["lr"]
    except Exception:
        return "unknown"


class CallbackBase:
    """The callbacks' common state: their arguments, the Watch while training, and the one after."""

    owner = "noisescope callback"

    def __init__(self, *, on_recommendation: Callable[[Any], None] | None = None, **watch_kwargs: Any) -> None:
        check_callback_arguments(self.owner, on_recommendation, watch_kwargs)
        self._on_recommendation = on_recommendation
        self._watch_kwargs = watch_kwargs
        self.watch: Any = None  # the noisescope.Watch while training
        self.last_watch: Any = None  # after training: the removed Watch (stats, last recommendation)

    @property
    def recommendation(self) -> Any:
        """The sidecar's latest recommendation for this run (None before the first, or when never watched)."""
        watch = self.watch or self.last_watch
        return watch.recommendation if watch is not None else None

    def _stop(self) -> None:
        watch, self.watch = self.watch, None
        if watch is not None:
            watch.remove()
            self.last_watch = watch
