"""Hugging Face Transformers: `Trainer(..., callbacks=[NoiseScopeCallback()])` is the whole integration.

The Trainer's optimizer arrives wrapped by Accelerate: the torch optimizer inside is the one
watched (its step pre-hook marks step ends), and the wrapper's GradScaler, under fp16, is passed
on (its scale divided out, the steps it skips sent as skipped). Examples per micro-batch come from
the model's forward (`model(**inputs)`: dim 0 of the first tensor).
"""
from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from ._common import CallbackBase, dataset_size_of, logger, start_watch

OWNER = "noisescope.integrations.transformers.NoiseScopeCallback"


class NoiseScopeCallback(CallbackBase, TrainerCallback):
    """Watches the Trainer's model and optimizer from on_train_begin to on_train_end.

    Args:
        on_recommendation: called (on a background thread) with each new noisescope.Recommendation.
            Nothing is applied to the Trainer: the batch size stays the user's decision.
        **watch_kwargs: passed on to noisescope.watch (address, run, every, mode, policy, source, ...).
    """

    owner = OWNER

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watch is not None:
            return
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        if model is None or optimizer is None:
            logger.warning("noisescope: %s: the Trainer passed no model or optimizer; nothing is watched", OWNER)
            return
        if getattr(args, "torch_compile", False):
            model = _compiled_wrapper(model)
        self.watch = start_watch(
            OWNER,
            model,
            getattr(optimizer, "optimizer", optimizer),  # Accelerate's AcceleratedOptimizer wraps the torch one
            scaler=getattr(optimizer, "scaler", None),
            dataset_size=dataset_size_of(kwargs.get("train_dataloader")),
            accumulation_steps=int(args.gradient_accumulation_steps),
            micro_batch=int(args.per_device_train_batch_size),
            world_size=int(args.world_size),
            on_recommendation=self._on_recommendation,
            watch_kwargs=self._watch_kwargs,
            first_step=int(getattr(state, "global_step", 0) or 0),  # resume_from_checkpoint restores it first
        )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._stop()


def _compiled_wrapper(model: Any) -> Any:
    """With torch_compile the Trainer trains through a torch.compile wrapper callbacks are not given; the
    model's own forward hook would run inside compiled code (where ours do nothing): watch the wrapper."""
    import gc

    for obj in gc.get_objects():  # once, at train begin (as _ddp.find_ddp finds DDP's wrapper)
        if type(obj).__name__ == "OptimizedModule" and getattr(obj, "_orig_mod", None) is model:
            return obj
    logger.warning(
        "noisescope: %s: torch_compile is set but no torch.compile wrapper of the model was found; steps are "
        "sent as skipped if the forward runs compiled (examples unknown)",
        OWNER,
    )
    return model
