"""PyTorch Lightning: `L.Trainer(..., callbacks=[NoiseScopeCallback()])` is the whole integration.

Lightning runs a step's last forward and backward in a closure inside optimizer.step(), after the
optimizer's step pre-hooks, so step ends come from `on_before_optimizer_step` instead (after the
backward, before clipping), and each micro-batch's examples from the batch Lightning hands the
LightningModule (its training_step need not call its own forward). Under "16-mixed" the precision
plugin's GradScaler is passed on: its scale is divided out; a step it skips has inf/NaN norms and
is sent as skipped for that reason.
"""
from __future__ import annotations

from typing import Any, Callable

import lightning.pytorch as pl

from ._common import CallbackBase, dataset_size_of, logger, start_watch

OWNER = "noisescope.integrations.lightning.NoiseScopeCallback"


class NoiseScopeCallback(CallbackBase, pl.Callback):
    """Watches the LightningModule and its optimizer for the length of `fit`.

    Args:
        on_recommendation: called (on a background thread) with each new noisescope.Recommendation.
        apply: False (default): nothing is applied, the batch size stays the user's decision. True: at the
            start of each epoch the latest increase/decrease advice made for the batch now running sets
            `trainer.accumulate_grad_batches` (the loader's micro-batch is kept; at least 2 on one process
            without per-example norms, so the noise scale stays measurable). Each change is in `.changes`.
        **watch_kwargs: passed on to noisescope.watch (address, run, every, mode, policy, source, ...).
    """

    owner = OWNER

    def __init__(
        self, *, on_recommendation: Callable[[Any], None] | None = None, apply: bool = False, **watch_kwargs: Any
    ) -> None:
        super().__init__(on_recommendation=on_recommendation, **watch_kwargs)
        if not isinstance(apply, bool):
            raise TypeError(f"{OWNER}: apply must be a bool, got {type(apply).__name__}")
        self._apply = apply
        self.changes: list[tuple[int, int, int]] = []  # (first step with it, accumulation before, after)
        self._mark_step: Callable[[], None] | None = None
        self._fed: Callable[[Any], None] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.watch is not None:
            return
        optimizers = trainer.optimizers
        if not optimizers:
            logger.warning("noisescope: %s: the trainer has no optimizer; nothing is watched", OWNER)
            return
        if len(optimizers) > 1:
            logger.warning("noisescope: %s: %d optimizers; only the first is watched", OWNER, len(optimizers))
        loader = trainer.train_dataloader
        self.watch = start_watch(
            OWNER,
            _watched_module(trainer, pl_module),
            optimizers[0],
            scaler=getattr(trainer.precision_plugin, "scaler", None),
            dataset_size=dataset_size_of(loader),
            accumulation_steps=int(trainer.accumulate_grad_batches),
            micro_batch=getattr(loader, "batch_size", None),
            world_size=int(trainer.world_size),
            on_recommendation=self._on_recommendation,
            watch_kwargs=self._watch_kwargs,
            first_step=int(trainer.global_step),  # restored from ckpt_path before on_train_start
        )
        meter = self.watch._meter if self.watch is not None else None
        if meter is None:
            return
        self._mark_step = meter.external_steps()
        self._fed = meter.feed_examples
        tap, self.watch._skip_tap = self.watch._skip_tap, None
        if tap is not None:
            tap.detach()  # step ends no longer come from optimizer.step(): the non-finite norms mark a skip

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning counts accumulation from the epoch's first batch: changing it mid-epoch would misalign steps.
        watch = self.watch
        if not self._apply or watch is None or watch._meter is None:
            return
        advice = watch.recommendation
        micro = getattr(trainer.train_dataloader, "batch_size", None)
        if advice is None or advice.action == "hold" or not micro:
            return
        world, before = int(trainer.world_size), int(trainer.accumulate_grad_batches)
        if advice.current_global_batch != micro * before * world:
            return  # made for another batch (an epoch's short tail, or before the last change)
        from .._adaptive import fewest_steps

        after = max(fewest_steps(world, watch._meter.has_per_example), round(advice.recommended_global_batch / (micro * world)))
        if after == before:
            return
        trainer.accumulate_grad_batches = after
        watch._meter.expect_micro_batches(after)
        self.changes.append((watch._meter.steps_seen, before, after))
        logger.info(
            "noisescope: %s: accumulate_grad_batches %d → %d (global batch %d → %d) from the sidecar's advice at step %d",
            OWNER, before, after, micro * before * world, micro * after * world, advice.step,
        )

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._fed is not None:
            self._fed(batch)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self._mark_step is not None and optimizer is trainer.optimizers[0]:
            self._mark_step()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._stop()

    def _stop(self) -> None:
        self._mark_step, self._fed = None, None
        super()._stop()

def _watched_module(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
    """The DDP wrapper under DDP (its communication hook gives the all-reduced norms), else the LightningModule."""
    try:
        from torch.nn.parallel import DistributedDataParallel
    except Exception:
        return pl_module
    model = getattr(trainer.strategy, "model", None)
    return model if isinstance(model, DistributedDataParallel) else pl_module
