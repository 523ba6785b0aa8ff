"""`watch()` and the handle it returns: argument checks, wiring, and giving everything back."""
from __future__ import annotations

import atexit
import hashlib
import logging
import os
import secrets
import sys
import threading
import time
import uuid
import weakref
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable

from ._credentials import Credentials, PathOrPem
from ._credentials import resolve as resolve_credentials
from ._guard import Guard
from ._policy import BatchPolicy
from ._types import Recommendation, WatchStats

if TYPE_CHECKING:
    import torch

    from ._adaptive import AdaptiveAccumulation
    from ._meter import Meter
    from ._sender import Sender

logger = logging.getLogger("noisescope")

DEFAULT_ADDRESS = "127.0.0.1:50051"
MODES = ("norms", "dense", "sketch", "auto")
DENSE_DTYPES = ("fp32", "fp16", "bf16")
SOURCES = ("auto", "accumulation", "per-example")
EXIT_FLUSH_S = 1.0  # at interpreter exit: a short, bounded flush
RUN_NAME_LIMIT = 1024  # the sidecar's limit
MAX_SKETCH_SIZE = 1 << 18  # one layer's fp32 sketch per 1 MiB message (_sketch.MAX_SKETCH_SIZE)
MAX_STEP = (1 << 53) - 1  # the sidecar reads step numbers as doubles: exact up to here

_watched: weakref.WeakSet[Any] = weakref.WeakSet()  # models with a live Watch
_live: weakref.WeakSet[Watch] = weakref.WeakSet()  # watches to flush at interpreter exit


@atexit.register
def _remove_all_at_exit() -> None:
    """A short, bounded flush of every live watch; never holds up interpreter exit for long."""
    for handle in list(_live):
        try:
            handle.remove(timeout=EXIT_FLUSH_S)
        except Exception:
            pass


def watch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    address: str | None = None,
    run: str | None = None,
    every: int = 1,
    dataset_size: int | None = None,
    mode: str = "norms",
    policy: BatchPolicy | None = None,
    source: str = "auto",
    per_example_sample: int | float | str | None = "auto",
    enabled: bool = True,
    dtype: str = "fp32",
    token: str | None = None,
    tls_ca: PathOrPem | None = None,
    tls_cert: PathOrPem | None = None,
    tls_key: PathOrPem | None = None,
    tls_server_name: str | None = None,
    sketch_size: int = 4096,
    scaler: Any = None,
    first_step: int = 0,
) -> Watch:
    """Streams gradient-noise measurements of `model`'s training to the noisescope sidecar.

    Hooks the model's parameters (per-micro-batch gradients, before accumulation and
    clipping), its forward (examples per micro-batch) and `optimizer.step()` (step
    boundaries); every `every`-th step is measured and sent from a background thread.
    Training is never blocked or failed by noisescope: with no sidecar, measurements are
    dropped after one warning.

    Args:
        model: the module whose gradients are measured. Under DDP, the DistributedDataParallel or its
            `.module`: a communication hook (DDP's own all-reduce, numerics unchanged) then measures each
            layer's rank-local accumulated gradient (accumulate under `no_sync()`) and the all-reduced one,
            a third batch scale. A model with a communication hook of the user's keeps it, and the reduced
            gradient is read from `.grad` at the optimizer step instead (logged). Under FSDP2 (`fully_shard`,
            root included), each layer's micro-batch and rank-local gradient before the reduce-scatter (accumulate
            with `set_requires_gradient_sync(False)`) and this rank's shard of the reduced one, in norms mode (dense,
            sketch and per-example fall back to it, logged); FSDP1, HSDP and other configurations it cannot measure
            are named in the log and left unwatched.
        optimizer: the optimizer stepping it.
        address: the sidecar's host:port; default $NOISESCOPE_ADDRESS or 127.0.0.1:50051.
        run: the run's name in the sidecar; default $NOISESCOPE_RUN or `<script>-<time>-<hex>`.
        every: measure one optimizer step in `every` (the 0th, every-th, ...).
        dataset_size: examples in the training set, for the finite-population correction.
        mode: "norms" (default: per-layer squared norms); "dense" (each micro-batch's whole gradient,
            streamed in chunks: the sidecar adds gradient diversity, at the cost of moving it);
            "sketch" (each micro-batch's gradient per layer compressed on its device into a CountSketch of
            `sketch_size` buckets, re-seeded every step: the sidecar's Gram matrices of the sketches give
            unbiased norms, B_simple and diversity for far fewer bytes than dense);
            "auto" (dense for models of at most 2**20 parameters, else norms;
            the log says which). Dense and sketch steps use accumulation micro-batches and ranks as the source.
        policy: this run's bounds for batch-size recommendations (a `BatchPolicy`); None
            leaves every field to the sidecar's defaults.
        source: where the second batch scale comes from. "accumulation": micro-batches of
            gradient accumulation and DDP ranks only. "per-example": also per-example gradient
            norms from module hooks on the layers it knows (Linear, convolutions, Embedding, norm
            layers, MultiheadAttention; the warning for a model it cannot cover lists them), against
            the micro-batch, on every measured step, so one micro-batch on one device gets an
            estimate; parameters of other modules are left out of the estimate (listed in the
            log and to the sidecar). "auto" (default): the cheapest source that exists wins.
            Ranks and accumulation cost nothing extra; per-example norms are added only on one
            process, only when they cover every parameter and no BatchNorm mixes the examples,
            and then only on measured steps expected to have one micro-batch (the previous
            measured step had one, or there is none yet): once a step accumulates, later steps
            skip the per-example work while the count stays at 2 or more, and a step that turns
            out to accumulate is sent without per-example sums. The log says which source.
        per_example_sample: "auto" (default): per-example sums over every example while those of the layers
            that can be sampled (convolutions, sequence Linears, embeddings, norms, attention) cost at most 5% of
            the step's time (or under 0.5 ms), else over s of them as below, s halved or doubled every few measured
            steps to stay within it, never below 4 (logged; each step's sums say whether they were sampled).
            None: always over every example. An int s ≥ 1: over s of each
            micro-batch's B examples (B ≤ s: all) drawn by importance when the backward's first δ arrives
            (probability ∝ that layer's per-example norm, mixed with uniform) and reweighted: Σ_k w_k |g_{i_k}|²,
            an unbiased estimate whose arithmetic is about s/B of the exact one's (each layer keeps a fixed cost;
            a plain Linear on [B, d] rows stays exact: cheaper than selecting). A float in (0, 1]: that fraction of
            B. Drawn from noisescope's own seeded generator (training's random stream is untouched). Needs
            mode="norms" and a source that can be per-example ("auto" or "per-example").
        enabled: False returns an inert handle, so one flag turns noisescope off.
        dtype: dense and sketch mode's wire precision: "fp32" (default), "fp16" or "bf16" (half the bytes).
        sketch_size: sketch mode's buckets per layer, m (a layer of at most m elements is sent exactly);
            the sketch's relative error on a squared norm is about sqrt(2/m) per step before smoothing.
        token: the sidecar's token (or a run token for this run), sent as `authorization: Bearer <token>`;
            default $NOISESCOPE_TOKEN. Never logged.
        tls_ca: the CA certificate (a path, or PEM bytes) that signed the sidecar's certificate: connects
            over TLS; default $NOISESCOPE_TLS_CA.
        tls_cert, tls_key: this process's client certificate and key (paths or PEM bytes), for a sidecar
            that requires client certificates; default $NOISESCOPE_TLS_CERT, $NOISESCOPE_TLS_KEY.
        tls_server_name: the name checked against the sidecar's certificate instead of the address's
            host (when connecting by IP, a tunnel or an alias); TLS only; default $NOISESCOPE_TLS_SERVER_NAME.
        scaler: the AMP `torch.amp.GradScaler` scaling this training's loss: its scale S is divided out of
            every measured norm (squared norms by S²) and of dense and sketch gradients, and a step it skips
            (inf/NaN gradients) is sent as skipped with that reason. Without it, norms under a GradScaler are
            S² too large (B_simple, a ratio within a step, is not) and skipped steps are discarded unsent.
        first_step: the number of the first optimizer step after watch(); default 0. A training resumed from a
            checkpoint (a torchrun elastic restart included) passes the next step's number, so its steps continue
            the run's numbering (and `every`'s cadence) instead of starting again at 0, which the sidecar and its
            run log would take for a new training under the same name.

    Returns:
        A `Watch`: a context manager; `.remove()` restores the model and optimizer.
    """
    import torch

    if not isinstance(enabled, bool):
        raise TypeError(f"noisescope.watch: enabled must be a bool, got {type(enabled).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"noisescope.watch: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"noisescope.watch: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if isinstance(every, bool) or not isinstance(every, int):
        raise TypeError(f"noisescope.watch: every must be an int, got {type(every).__name__}")
    if every < 1:
        raise ValueError(f"noisescope.watch: every must be ≥ 1 (measure one step in `every`), got {every}")
    if not isinstance(mode, str):
        raise TypeError(f"noisescope.watch: mode must be a str, got {type(mode).__name__}")
    if mode not in MODES:
        raise ValueError(f"noisescope.watch: unknown mode {mode!r}; expected one of {', '.join(map(repr, MODES))}")
    if isinstance(sketch_size, bool) or not isinstance(sketch_size, int):
        raise TypeError(f"noisescope.watch: sketch_size must be an int, got {type(sketch_size).__name__}")
    if not 1 <= sketch_size <= MAX_SKETCH_SIZE:
        raise ValueError(f"noisescope.watch: sketch_size must be in 1..{MAX_SKETCH_SIZE}, got {sketch_size}")
    if isinstance(first_step, bool) or not isinstance(first_step, int):
        raise TypeError(f"noisescope.watch: first_step must be an int, got {type(first_step).__name__}")
    if not 0 <= first_step <= MAX_STEP:
        raise ValueError(f"noisescope.watch: first_step must be in 0..{MAX_STEP} (the next optimizer step's number), got {first_step}")
    if not isinstance(dtype, str) or dtype not in DENSE_DTYPES:
        raise ValueError(f"noisescope.watch: dtype must be one of {', '.join(map(repr, DENSE_DTYPES))}, got {dtype!r}")
    if dataset_size is not None:
        if isinstance(dataset_size, bool) or not isinstance(dataset_size, int):
            raise TypeError(
                f"noisescope.watch: dataset_size must be an int or None, got {type(dataset_size).__name__}"
            )
        if dataset_size < 1:
            raise ValueError(f"noisescope.watch: dataset_size must be ≥ 1 (or None if unknown), got {dataset_size}")
    if address is None:
        address = os.environ.get("NOISESCOPE_ADDRESS") or DEFAULT_ADDRESS
    if not isinstance(address, str) or not address.strip():
        raise TypeError(f"noisescope.watch: address must be a non-empty 'host:port' string, got {address!r}")
    if run is not None and (not isinstance(run, str) or not run.strip()):
        raise TypeError(f"noisescope.watch: run must be a non-empty str or None, got {run!r}")
    if run is not None and len(run) > RUN_NAME_LIMIT:
        raise ValueError(f"noisescope.watch: run name is longer than {RUN_NAME_LIMIT} characters")
    if not isinstance(source, str):
        raise TypeError(f"noisescope.watch: source must be a str, got {type(source).__name__}")
    if source not in SOURCES:
        raise ValueError(f"noisescope.watch: unknown source {source!r}; expected one of {', '.join(map(repr, SOURCES))}")
    if mode in ("dense", "sketch", "auto") and source == "per-example":
        raise ValueError("noisescope.watch: source='per-example' is a norms-mode source; use mode='norms' with it")
    _check_per_example_sample(per_example_sample, mode, source)
    if policy is not None and not isinstance(policy, BatchPolicy):
        raise TypeError(f"noisescope.watch: policy must be a noisescope.BatchPolicy or None, got {type(policy).__name__}")
    if scaler is not None:
        from ._grad_scaler import check_scaler

        check_scaler(scaler)
    if enabled and model in _watched:
        raise ValueError("noisescope.watch: this model is already watched; call .remove() on that watch first")

    credentials = resolve_credentials(token, tls_ca, tls_cert, tls_key, tls_server_name)
    rank, world_size = _rank_and_world_size()
    run = run or os.environ.get("NOISESCOPE_RUN") or _default_run_name(world_size)
    handle = Watch(
        address=address, run=run, policy=policy, world_size=world_size, optimizer=optimizer, credentials=credentials
    )
    if enabled:
        mode = _resolve_mode(mode, model) if mode == "auto" else mode
        handle._start(
            model,
            optimizer,
            every=every,
            dataset_size=dataset_size or 0,
            rank=rank,
            source=source,
            mode=mode,
            dtype=dtype,
            sketch_size=sketch_size,
            scaler=scaler,
            first_step=first_step,
            per_example_sample=per_example_sample,
        )
    return handle


class Watch:
    """The handle `watch()` returns. Use `.remove()` (or a `with` block) to detach."""

    def __init__(
        self,
        *,
        address: str,
        run: str,
        policy: BatchPolicy | None = None,
        world_size: int = 1,
        optimizer: torch.optim.Optimizer | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self._address = address
        self._credentials = credentials
        self._run = run
        self._policy = policy
        self._world_size = world_size
        self._optimizer = optimizer
        self._adaptive: AdaptiveAccumulation | None = None
        self._guard = Guard()
        self._meter: Meter | None = None
        self._sender: Sender | None = None
        self._skip_tap: Any = None  # AMP: the GradScaler.step wrapper
        self._model_ref: weakref.ref[Any] | None = None
        self._remove_lock = threading.Lock()
        self._removed = False
        self._recommendation: Recommendation | None = None
        self._callbacks: dict[int, Callable[[Recommendation], None]] = {}
        self._callback_failures: set[int] = set()
        self._next_callback = 0
        self._delivered: tuple[str, int, int, str, int] | None = None  # the last recommendation's identity

    def _start(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        every: int,
        dataset_size: int,
        rank: int,
        source: str = "auto",
        mode: str = "norms",
        dtype: str = "fp32",
        sketch_size: int = 4096,
        scaler: Any = None,
        first_step: int = 0,
        per_example_sample: int | float | str | None = "auto",
    ) -> None:
        import torch

        from ._compiled import compiled_form, original_module

        compiled = compiled_form(model)
        params, layers = _layers(original_module(model))  # a wrapper's parameters under their own names
        if not params:
            raise ValueError("noisescope.watch: the model has no parameters that require gradients")
        try:
            from . import _sketch, _wire
            from . import _grad_scaler
            from ._meter import Meter, _ModuleHook
            from ._per_example import PerExample
            from ._sender import Sender
        except Exception as error:  # e.g. generated code and protobuf/grpcio versions disagree
            logger.warning(
                "noisescope: cannot load its gRPC code (%s: %s); training continues unwatched. "
                "Reinstalling noisescope regenerates it.",
                type(error).__name__,
                error,
            )
            return
        if not {id(p) for group in optimizer.param_groups for p in group["params"]} & {id(p) for p in params}:
            logger.warning("noisescope: the optimizer holds none of the model's parameters; is it the right one?")
        from ._fsdp import fsdp_source, norms_under_fsdp

        mode, source = norms_under_fsdp(model, params, mode, source)  # dense shards of a sharded gradient: not yet
        per_example = None
        uncovered: list[Any] = []
        if mode == "dense":
            chosen, one_scale_hint = None, ""
            logger.info("noisescope: mode dense (%s on the wire): batch scales from accumulation micro-batches and ranks", dtype)
        elif mode == "sketch":
            chosen, one_scale_hint = None, ""
            _log_sketch_mode(layers, sketch_size, dtype)
        elif compiled and source != "accumulation":
            chosen, one_scale_hint = None, " (Per-example norms are off for torch.compile'd models.)"
            logger.log(
                logging.WARNING if source == "per-example" else logging.INFO,
                "noisescope: torch.compile'd model (%s): per-example norms need module hooks, which compiled code "
                "does not run; batch scales from gradient-accumulation micro-batches and ranks (source=%r)",
                compiled,
                source,
            )
        else:
            chosen, one_scale_hint = _choose_source(source, model, params, layers, self._world_size)
        if chosen is not None:
            cover = chosen
            uncovered = [layers[i] for i in sorted(cover.uncovered)]
            position = {old: new for new, old in enumerate(cover.covered)}
            params = [params[i] for i in cover.covered]
            layers = [layers[i] for i in cover.covered]
            modules = {
                m: (position.get(w) if w is not None else None, position.get(b) if b is not None else None)  # type: ignore[arg-type]
                for m, (w, b) in cover.modules.items()
            }
            per_example = PerExample(modules, len(params), self._guard, _ModuleHook, sample=per_example_sample)
        elif per_example_sample not in (None, "auto"):
            logger.info("noisescope: per_example_sample=%r unused: the per-example source is off (see above)", per_example_sample)
        info = _wire.RankInfo(
            run=self._run,
            rank=rank,
            world_size=self._world_size,
            layers=layers,
            dataset_size=dataset_size,
            every=every,
            framework=f"torch {torch.__version__}",
            # The sidecar restarts this rank's step history for a new session, not for a reconnection.
            session=uuid.uuid4().hex,
            optimizer=type(optimizer).__name__,
            policy=self._policy,
            uncovered_layers=uncovered,
            per_example=per_example is not None,
            per_example_sampled=per_example is not None and per_example.sampler is not None,
            mode=mode,
            sketch_sizes=_sketch.sketch_sizes(layers, sketch_size) if mode == "sketch" else (),
            sketch_dtype=dtype,
        )
        sender = Sender(
            address=self._address,
            info=info,
            guard=self._guard,
            on_recommendation=self._on_recommendation,
            credentials=self._credentials,
        )
        dense = None
        if mode == "dense":
            from ._dense import DenseCapture

            dense = DenseCapture(params, layers, dtype=dtype, count_dropped=sender._count_dropped)
        elif mode == "sketch":
            dense = _sketch.SketchCapture(
                params, layers, run=self._run, size=sketch_size, dtype=dtype, count_dropped=sender._count_dropped
            )
        fsdp, fsdp_off = fsdp_source(model, params, self._guard)
        if fsdp_off:
            return  # said why (an FSDP configuration it cannot measure); nothing was hooked
        ddp_source, reduced_at_step = None, ""
        if mode == "norms" and self._world_size > 1 and fsdp is None:
            ddp_source, reduced_at_step = _ddp_source(model, params, self._guard)
        meter = Meter(
            model,
            optimizer,
            params,
            every=every,
            world_size=self._world_size,
            guard=self._guard,
            submit=sender.submit,
            wanted=sender.wanted,
            count_dropped=sender._count_dropped,
            per_example=per_example,
            per_example_auto=source == "auto",
            names=[layer.name for layer in layers],
            one_scale_hint=one_scale_hint,
            dense=dense,
            ddp=ddp_source,
            reduced_at_step=reduced_at_step,
            fsdp=fsdp,
            loss_scale=_grad_scaler.loss_scale(scaler) if scaler is not None else None,
            first_step=first_step,
        )
        skip_tap = _grad_scaler.SkipTap(scaler, optimizer, meter, self._guard) if scaler is not None else None
        try:
            meter.attach()
            if skip_tap is not None:
                skip_tap.attach()
            sender.start()
        except Exception as error:  # registration failure warns, never raises
            meter.detach()
            if skip_tap is not None:
                skip_tap.detach()
            logger.warning(
                "noisescope: could not hook the model (%s: %s); training continues unwatched",
                type(error).__name__,
                error,
            )
            return
        self._meter, self._sender, self._skip_tap = meter, sender, skip_tap
        self._model_ref = weakref.ref(model)
        _watched.add(model)
        _live.add(self)

    # ------------------------------------------------------------ public surface

    @property
    def run(self) -> str:
        return self._run

    @property
    def address(self) -> str:
        return self._address

    @property
    def enabled(self) -> bool:
        """True while hooks are attached and measuring (False after remove() or an internal error)."""
        return self._meter is not None and not self._removed and not self._guard.tripped

    @property
    def policy(self) -> BatchPolicy | None:
        """The BatchPolicy this run sent the sidecar (None: the sidecar's defaults)."""
        return self._policy

    @property
    def recommendation(self) -> Recommendation | None:
        """The sidecar's latest batch-size recommendation for this run, or None."""
        return self._recommendation

    def on_recommendation(self, callback: Callable[[Recommendation], None]) -> Callable[[], None]:
        """Calls `callback` (on a background thread) with each new recommendation; returns an unregister function."""
        if not callable(callback):
            raise TypeError(f"on_recommendation: callback must be callable, got {type(callback).__name__}")
        key = self._next_callback
        self._next_callback += 1
        self._callbacks[key] = callback

        def unregister() -> None:
            self._callbacks.pop(key, None)

        return unregister

    def adaptive_accumulation(
        self,
        *,
        steps: int,
        micro_batch: int,
        apply_lr_hint: bool = False,
        scheduler: Any = None,
    ) -> AdaptiveAccumulation:
        """Opt-in: follow the sidecar's batch-size advice by changing the gradient-accumulation count.

        The data loader keeps its micro-batch; the helper's `.steps` (micro-batches per optimizer
        step) changes only at a step boundary (the optimizer's step post-hook), to the count an
        increase or decrease recommendation made for the batch now running asks for (rounded to
        this micro-batch, at least 2 on one process, within this watch's policy). Advice made for
        another batch (stale, e.g. before the last change) and "hold" change nothing.

        Args:
            steps: the accumulation count to start with (≥ 2 on one process, ≥ 1 under DDP).
            micro_batch: examples per micro-batch on each rank, as the data loader gives them.
            apply_lr_hint: also scale every parameter group's learning rate as the recommendation's
                hint says (a heuristic: linear scaling for SGD, square root for adaptive optimizers).
            scheduler: with apply_lr_hint, an LR scheduler whose `base_lrs` are scaled the same
                way. Caveat: other absolute learning rates a scheduler keeps (OneCycleLR's max_lr,
                CyclicLR's bounds, a group's 'initial_lr') are not touched.

        Under DDP every rank follows the same advice, each at its own next step boundary after it
        arrives, so for a step the ranks' counts may differ.

        Raises:
            ValueError: steps or micro_batch out of range, or the policy's max_batch below the
                smallest batch this helper can run ("bounds cannot be satisfied").
        """
        from ._adaptive import AdaptiveAccumulation, check_bounds

        # Per-example norms (when this watch has them) measure a one-micro-batch step too.
        per_example = self.enabled and self._meter is not None and self._meter.has_per_example
        check_bounds(
            steps=steps, micro_batch=micro_batch, world_size=self._world_size, policy=self._policy, per_example=per_example
        )
        if not isinstance(apply_lr_hint, bool):
            raise TypeError(f"adaptive_accumulation: apply_lr_hint must be a bool, got {type(apply_lr_hint).__name__}")
        if scheduler is not None and not isinstance(getattr(scheduler, "base_lrs", None), list):
            raise TypeError(
                f"adaptive_accumulation: scheduler must be an LR scheduler (with base_lrs), got {type(scheduler).__name__}"
            )
        if self._removed:
            raise RuntimeError("adaptive_accumulation: this watch was removed")
        if self._adaptive is not None and not self._adaptive._removed:
            raise RuntimeError("adaptive_accumulation: this watch already has one; remove() it first")
        helper = AdaptiveAccumulation(
            optimizer=self._optimizer,
            steps=steps,
            micro_batch=micro_batch,
            world_size=self._world_size,
            per_example=per_example,
            policy=self._policy,
            apply_lr_hint=apply_lr_hint,
            scheduler=scheduler,
            meter=self._meter if self.enabled else None,
        )
        if self.enabled:  # otherwise no advice comes: a fixed count
            helper._attach(self.on_recommendation)
            if self._recommendation is not None:
                helper._offer(self._recommendation)  # advice that came before: the staleness check decides
        self._adaptive = helper
        return helper

    @property
    def stats(self) -> WatchStats:
        meter, sender = self._meter, self._sender
        return WatchStats(
            steps_seen=meter.steps_seen if meter else 0,
            steps_measured=meter.steps_measured if meter else 0,
            messages_sent=sender.messages_sent if sender else 0,
            dropped=sender.dropped if sender else 0,
            refusals=sender.refusals if sender else 0,
            queued=sender.queued if sender else 0,
            connected=sender.connected if sender else False,
            measuring_one_in=meter.measuring_one_in if meter else 1,
        )

    def remove(self, timeout: float = 2.0) -> None:
        """Removes every hook, flushes for at most `timeout` seconds, says Goodbye; idempotent."""
        with self._remove_lock:
            if self._removed:
                return
            self._removed = True
        _live.discard(self)
        if self._adaptive is not None:
            self._adaptive.remove()
        if self._meter is not None:
            self._meter.detach()
        if self._skip_tap is not None:
            self._skip_tap.detach()
        model = self._model_ref() if self._model_ref is not None else None
        if model is not None:
            _watched.discard(model)
        if self._sender is not None:
            self._sender.close(timeout)

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self._removed else "measuring" if self.enabled else "off"
        return f"<noisescope.Watch run={self._run!r} address={self._address!r} {state}>"

    # ------------------------------------------------------------ internals

    def _on_recommendation(self, recommendation: Recommendation) -> None:
        """Sender thread. After each Welcome the sidecar re-sends the run's latest: delivered once."""
        r = recommendation
        identity = (r.run, r.sequence, r.step, r.action, r.recommended_global_batch)
        if identity == self._delivered:
            return
        self._delivered = identity
        self._recommendation = recommendation
        for key, callback in list(self._callbacks.items()):
            try:
                callback(recommendation)
            except Exception:  # the user's callback: report it, keep the others going
                if key not in self._callback_failures:
                    self._callback_failures.add(key)
                    logger.exception("noisescope: an on_recommendation callback raised (reported once)")



def _layers(model: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[Any]]:
    """Non-empty parameters that require gradients, in named_parameters() order, with their module's class."""
    import torch

    from ._meter import LayerInfo

    kinds: dict[int, str] = {}
    sparse: set[int] = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            kinds.setdefault(id(param), type(module).__name__)
            if isinstance(module, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and module.sparse:
                sparse.add(id(param))
    params: list[torch.nn.Parameter] = []
    layers: list[LayerInfo] = []
    for name, param in model.named_parameters():
        if not param.requires_grad or param.numel() == 0:
            continue
        if id(param) in sparse:
            logger.warning("noisescope: %s has sparse gradients, which norms mode does not measure yet; skipped", name)
            continue
        params.append(param)
        layers.append(LayerInfo(name=name, numel=param.numel(), kind=kinds.get(id(param), "")))
    return params, layers


def _log_sketch_mode(layers: list[Any], size: int, dtype: str) -> None:
    from ._sketch import sketch_sizes

    sizes = sketch_sizes(layers, size)
    parameters = sum(layer.numel for layer in layers)
    exact = sum(1 for layer, m in zip(layers, sizes) if m == layer.numel)
    logger.info(
        "noisescope: mode sketch (CountSketch of at most %d buckets per layer, re-seeded every step, %s on the wire): "
        "%d of %d values per micro-batch (%d of %d layers sent exactly); batch scales from accumulation "
        "micro-batches and ranks",
        size,
        dtype,
        sum(sizes),
        parameters,
        exact,
        len(layers),
    )


def _check_per_example_sample(sample: Any, mode: str, source: str) -> None:
    if sample is None or sample == "auto":
        return  # exact, or exact until it costs more than its budget: both fine wherever per-example is off
    if isinstance(sample, bool) or not isinstance(sample, (int, float)):
        raise TypeError(
            f"noisescope.watch: per_example_sample must be 'auto', None, an int or a float, got "
            f"{type(sample).__name__} {sample!r}"
        )
    if isinstance(sample, int) and sample < 1:
        raise ValueError(f"noisescope.watch: per_example_sample must be ≥ 1 examples (or a fraction in (0, 1]), got {sample}")
    if isinstance(sample, float) and not 0.0 < sample <= 1.0:
        raise ValueError(f"noisescope.watch: per_example_sample as a float is a fraction of the batch in (0, 1], got {sample}")
    if mode != "norms" or source == "accumulation":
        raise ValueError(
            f"noisescope.watch: per_example_sample needs the per-example source (mode='norms', source 'auto' or "
            f"'per-example'); got mode={mode!r}, source={source!r}"
        )


def _choose_source(
    source: str, model: torch.nn.Module, params: list[Any], layers: list[Any], world_size: int
) -> tuple[Any, str]:
    """The per-example Coverage if that source is on (else None), and a hint for the one-scale warning.

    Logs the choice once, with the reason. "auto" takes per-example norms only where they are the
    cheapest second scale there is: one process, every parameter covered, no BatchNorm (the
    meter then also skips them on steps that accumulate).
    """
    from ._per_example import coverage

    if source == "accumulation":
        logger.info("noisescope: batch-scale source: gradient-accumulation micro-batches and ranks (source='accumulation')")
        return None, ""
    if source == "auto" and world_size > 1:
        logger.info(
            "noisescope: batch-scale source: ranks (and accumulation micro-batches), world size %d; "
            "pass source='per-example' to add per-example norms",
            world_size,
        )
        return None, ""
    cover = coverage(model, params)
    total = sum(layer.numel for layer in layers)
    covered = sum(layers[i].numel for i in cover.covered)
    not_covered = ", ".join(f"{layers[i].name} ({why})" for i, why in sorted(cover.uncovered.items())) or "none"
    if not cover.covered:
        logger.warning(
            "noisescope: the per-example source covers none of this model's parameters (it knows %s; not covered: "
            "%s); using accumulation micro-batches and ranks only",
            _per_example_kinds(),
            not_covered,
        )
        return None, ""
    if cover.coupling:
        # Named with their kind: a Sequential's index alone read "1 mixes examples".
        modules = dict(model.named_modules())
        coupling = ", ".join(f"'{n}' ({type(modules['' if n == '<root>' else n]).__name__})" for n in cover.coupling)
        if source == "auto":
            logger.warning(
                "noisescope: the model mixes examples in training (batch statistics in %s), so per-example gradients "
                "are not independent; the per-example source is off (source='per-example' forces it, biased); using "
                "accumulation micro-batches and ranks only",
                coupling,
            )
            return None, ""
        logger.warning(
            "noisescope: source='per-example' while the model mixes examples (batch statistics in %s): the "
            "per-example contributions are not independent and the estimate is biased",
            coupling,
        )
    if source == "auto" and cover.uncovered:
        # Accumulation covers the whole model; per-example over part of it is the user's call.
        logger.info(
            "noisescope: batch-scale source: gradient-accumulation micro-batches and ranks (source='auto'), covering "
            "every parameter; per-example norms could cover only %d of %d parameters (%.1f%%), not: %s. "
            "source='per-example' forces them over the covered fraction (the rest is then left out of the estimate)",
            covered,
            total,
            100.0 * covered / total,
            not_covered,
        )
        return None, (
            f" source='per-example' gives one over the {100.0 * covered / total:.1f}% of parameters it covers "
            "(the rest left out of the estimate)."
        )
    if source == "auto":
        logger.info(
            "noisescope: batch-scale source: per-example gradient norms on measured steps of one micro-batch, "
            "accumulation micro-batches on steps that have several (source='auto'; no per-example work on those), "
            "covering all %d parameters",
            total,
        )
        return cover, ""
    logger.info(
        "noisescope: batch-scale source: per-example gradient norms on every measured step (and accumulation "
        "micro-batches and ranks when a step has them), covering %d of %d parameters (%.1f%%); left out of the "
        "estimate: %s",
        covered,
        total,
        100.0 * covered / total,
        not_covered,
    )
    return cover, ""


def _per_example_kinds() -> str:
    """The module types the per-example source computes terms for, from its own table (never a second list)."""
    from ._per_example import _COVERED, _FUNCTIONAL_PARENTS

    return ", ".join(kind.__name__ for kind in (*_COVERED, *_FUNCTIONAL_PARENTS))


# mode="auto": dense up to this many parameters (~16 MB per measured step at 4 micro-batches, fp32).
# Measured (bench_overhead.py --quick --mode dense, 2 vCPUs, one torch thread): a dense step costs the
# training about 1 ns per byte moved (sender and sidecar share the CPU) plus a few ms: +13% at every=10
# on a 1M-parameter MLP of 15 ms steps, +5.9% on a 15M one of 370 ms steps (norms: +0.4%, −2.7%). So
# dense is over the 1% budget here at any size; auto bounds its absolute cost, and norms stays the default.
AUTO_DENSE_MAX_PARAMETERS = 1 << 20


def _resolve_mode(mode: str, model: torch.nn.Module) -> str:
    """mode='auto': dense for small models, norms otherwise; logs the choice."""
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    chosen = "dense" if parameters <= AUTO_DENSE_MAX_PARAMETERS else "norms"
    logger.info(
        "noisescope: mode auto chose %s: the model has %d parameters (dense up to %d; pass mode='dense' or "
        "mode='norms' to force one)",
        chosen,
        parameters,
        AUTO_DENSE_MAX_PARAMETERS,
    )
    return chosen


def _ddp_source(model: torch.nn.Module, params: list[Any], guard: Guard) -> tuple[Any, str]:
    """Under DDP: our communication hook (rank-local and reduced norms), or, where the model has the
    user's hook, the fallback (reduced norms from .grad at the optimizer step); logs which."""
    from ._ddp import DdpSource, find_ddp

    ddp = find_ddp(model)
    if ddp is None:
        return None, ""
    source = DdpSource(ddp, params, guard)
    if source.attach():
        logger.info(
            "noisescope: DDP: a communication hook measures each bucket's rank-local and all-reduced gradient "
            "(the all-reduce is DDP's own; accumulate under no_sync() for the rank-local level)"
        )
        return source, ""
    if getattr(ddp, "gradient_as_bucket_view", False):
        logger.warning(
            "noisescope: DDP: the model already has a communication hook, which is kept; with "
            "gradient_as_bucket_view=True that hook may rewrite .grad before the backward ends, so the rank-local "
            "gradient is not observable and measured steps are sent as skipped"
        )
        return None, "skip"
    logger.warning(
        "noisescope: DDP: the model already has a communication hook, which is kept (fallback): the reduced "
        "gradient is read from .grad at optimizer.step() (after any clipping), the rank-local one from .grad "
        "at the end of the last backward (before DDP writes the hook's result there)"
    )
    return None, "grad"


def _rank_and_world_size() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _default_run_name(world_size: int) -> str:
    """Readable and unique; all ranks of one torchrun job derive the same name."""
    script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] not in ("", "-c", "-m") else ""
    script = script or "python"
    if world_size > 1:
        job = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        if job == "none":
            job = f"{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}"
        return f"{script}-{hashlib.sha1(job.encode()).hexdigest()[:8]}"
    return f"{script}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
