"""DDP: the rank-local and the all-reduced squared norm of each layer, from a communication hook.

A DDP bucket's buffer holds the rank's accumulated gradient Σ_j h_j when the bucket is
communicated (on the sync backward: under `no_sync()` nothing is communicated, so with
accumulation that is the step's last micro-batch), and the average over ranks once its
all-reduce is done. Our hook reads both, per parameter, and does the all-reduce as DDP's
built-in one does (each gradient times 1/world size, then a sum all-reduce), so the numerics
are those of DDP without a hook. The reduced average is the gradient the optimizer steps with:
the sidecar takes it as it is (see src/ingest/to-batch-scales.ts).

DDP takes one communication hook and has no way to remove it: after `remove()` ours passes
every bucket straight to the all-reduce, and a later `watch()` of the same model re-uses it.
A model with a hook of the user's keeps it; the meter then reads the reduced gradient from
`.grad` at the optimizer step instead (`FALLBACK`).
"""
from __future__ import annotations

import gc
import logging
import threading
import weakref
from typing import Any, Sequence

import torch

from ._guard import Guard

logger = logging.getLogger("noisescope")

_states: weakref.WeakKeyDictionary[Any, _HookState] = weakref.WeakKeyDictionary()  # DDP module → our hook's state


def find_ddp(model: torch.nn.Module) -> Any:
    """The DistributedDataParallel that is `model` or wraps it as `.module`, or None."""
    try:
        from torch.nn.parallel import DistributedDataParallel
    except Exception:
        return None
    if isinstance(model, DistributedDataParallel):
        return model
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    # The wrapped module does not know its wrapper: look for it (once, at watch()).
    for obj in gc.get_objects():
        if isinstance(obj, DistributedDataParallel) and obj.module is model:
            return obj
    return None


class _HookState:
    """What the registered hook closes over; `source` is None while no watch measures."""

    __slots__ = ("process_group", "source", "__weakref__")

    def __init__(self, process_group: Any) -> None:
        self.process_group = process_group
        self.source: DdpSource | None = None


def _comm_hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP checks the annotations: none here
    """DDP's own all-reduce (times 1/world size, as its reducer does without a hook, then a sum), in one
    future like `allreduce_hook`'s; on measured steps the bucket's norms before and after it."""
    import torch.distributed as dist

    source = state.source
    grads: list[torch.Tensor] | None = None
    if source is not None and source.wanted():
        try:
            grads = source.before(bucket)
        except Exception as error:
            source.guard.trip("the DDP communication hook", error)
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    tensor = bucket.buffer()
    tensor.mul_(1.0 / group.size())
    work = dist.all_reduce(tensor, group=group, async_op=True).get_future()
    if grads is None:
        return work.then(_first)

    def after(done):  # type: ignore[no-untyped-def]
        reduced = done.value()[0]
        try:
            source.after(bucket, grads, reduced)  # type: ignore[union-attr]
        except Exception as error:
            source.guard.trip("the DDP communication hook", error)  # type: ignore[union-attr]
        return reduced

    return work.then(after)


def _first(done):  # type: ignore[no-untyped-def]
    return done.value()[0]


class DdpSource:
    """Per measured step: each layer's rank-local |Σ_j h_j|² and its all-reduced |mean over ranks|²."""

    def __init__(self, ddp: Any, params: Sequence[torch.nn.Parameter], guard: Guard) -> None:
        self.guard = guard
        self._ddp = ddp
        self._index = {id(p): i for i, p in enumerate(params)}
        self._count = len(params)
        self._lock = threading.Lock()
        self._measuring = False
        self.local: list[Any] = []
        self.reduced: list[Any] = []
        self.syncs = 0  # buckets communicated this step, over all backward passes
        self.layer_syncs: list[int] = []
        self._state: _HookState | None = None
        self.begin_step(False)

    def attach(self) -> bool:
        """Registers (or re-uses) our hook; False when the model has a hook of the user's."""
        ddp = self._ddp
        state = _states.get(ddp)
        if state is None:
            if getattr(ddp, "_comm_hooks", None):
                return False
            state = _HookState(ddp.process_group)
            try:
                ddp.register_comm_hook(state, _comm_hook)
            except Exception:  # a built-in hook of the user's (DDP takes one hook), or DDP refused ours
                hooks = getattr(ddp, "_comm_hooks", None)
                if hooks and hooks[-1][1] is state:
                    hooks.pop()  # DDP records it before the reducer refuses it
                return False
            _states[ddp] = state
        if state.source is not None and state.source is not self:
            return False  # another live watch of this model (watch() refuses that earlier)
        state.source = self
        self._state = state
        return True

    def detach(self) -> None:
        """Our hook stays registered (DDP cannot remove one) and becomes a plain all-reduce."""
        state, self._state = self._state, None
        if state is not None and state.source is self:
            state.source = None
        self._measuring = False

    def begin_step(self, measuring: bool) -> None:
        with self._lock:
            self._measuring = measuring
            self.local = [None] * self._count
            self.reduced = [None] * self._count
            self.layer_syncs = [0] * self._count
            self.syncs = 0

    def wanted(self) -> bool:
        return self._measuring and not self.guard.tripped

    def before(self, bucket: Any) -> list[torch.Tensor]:
        """The bucket's rank-local gradients' norms, before the all-reduce changes the buffer in place."""
        from ._meter import _grad_sq_norms

        grads = list(bucket.gradients())
        norms = _grad_sq_norms(grads)
        with self._lock:
            self.syncs += 1
            for param, norm in zip(bucket.parameters(), norms):
                index = self._index.get(id(param))
                if index is not None:
                    self.local[index] = norm
                    self.layer_syncs[index] += 1
        return grads

    def after(self, bucket: Any, grads: list[torch.Tensor], reduced: torch.Tensor) -> None:
        """The same slices of the all-reduced buffer."""
        from ._meter import _grad_sq_norms

        buffer = bucket.buffer()
        flat = reduced.view(-1)
        base = buffer.storage_offset()
        views = [flat[g.storage_offset() - base : g.storage_offset() - base + g.numel()] for g in grads]
        norms = _grad_sq_norms(views)
        with self._lock:
            for param, norm in zip(bucket.parameters(), norms):
                index = self._index.get(id(param))
                if index is not None:
                    self.reduced[index] = norm

    def take(self) -> tuple[list[Any], list[Any], str]:
        """This step's (local, reduced, why not): why-not is '' when every layer has both, once."""
        with self._lock:
            local, reduced, counts = self.local, self.reduced, self.layer_syncs
        if any(c > 1 for c in counts):
            return [], [], (
                "DDP all-reduced the gradients on more than one backward pass of this step, so the rank-local "
                "accumulated gradient was never whole on this rank: accumulate under model.no_sync() for all but "
                "the last micro-batch"
            )
        missing = [i for i, (a, b) in enumerate(zip(local, reduced)) if a is None or b is None]
        if missing:
            return [], [], f"DDP communicated no bucket for {len(missing)} of {len(local)} layers in this step"
        return local, reduced, ""
