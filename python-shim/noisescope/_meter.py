"""Norms-mode measurement: per-micro-batch and accumulated squared gradient norms, per layer.

A parameter's tensor hook sees micro-batch j's own gradient h_j before AccumulateGrad adds it
to `.grad`, which then still holds S_{j-1}, the sum of the earlier micro-batches. |h_j|² and
⟨S_{j-1}, h_j⟩ are all we compute: the accumulated norm follows as
|S_k|² = Σ_j (|h_j|² + 2⟨S_{j-1}, h_j⟩) — measured before any clipping touches `.grad`, with
no extra pass over the gradients, no copies and no reference kept to any gradient tensor.
"""
from __future__ import annotations

import functools
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ._guard import Guard

logger = logging.getLogger("noisescope")

# Which backward pass (graph task) a gradient belongs to; None on torch builds without it.
_graph_task_id: Callable[[], int] | None = getattr(torch._C, "_current_graph_task_id", None)


@dataclass(frozen=True)
class LayerInfo:
    """One measured parameter tensor, as Hello.layers declares it."""

    name: str
    numel: int
    kind: str  # the owning module's class name


@dataclass
class PendingStep:
    """A measured step handed from the training thread to the sender thread.

    `values` holds k·L micro-batch squared norms (row-major, [micro-batch][layer]) and then the
    L accumulated ones, in float64; on CUDA it is a pinned host buffer still being filled by an
    asynchronous copy, readable once `ready` (a CUDA event) has completed.
    """

    step: int
    micro_batches: int
    micro_examples: list[int] | None  # None: the forward passes gave no batch size
    values: torch.Tensor
    ready: Any
    lr: float
    unix_ms: float


@dataclass(frozen=True)
class StepRecord:
    """One measured step on the host: what the wire messages are built from."""

    step: int
    micro_examples: tuple[int, ...]
    micro_sq_norms: tuple[tuple[float, ...], ...]  # [micro-batch][layer]: |h_j|²
    accumulated_sq_norms: tuple[float, ...]  # [layer]: |Σ_j h_j|², before any clipping
    lr: float
    unix_ms: float
    skipped: bool = False
    skip_reason: str = ""


def finish(pending: PendingStep, layers: Sequence[LayerInfo]) -> StepRecord:
    """Sender thread: waits for the device copy and turns it into a checked StepRecord."""
    if pending.ready is not None:
        pending.ready.synchronize()  # blocks the sender thread only, never training
    k, n_layers = pending.micro_batches, len(layers)
    flat: list[float] = pending.values.tolist()
    micro = tuple(tuple(flat[j * n_layers : (j + 1) * n_layers]) for j in range(k))
    accumulated = tuple(flat[k * n_layers :])
    examples = tuple(pending.micro_examples or ())
    skip_reason = ""
    for i in range(n_layers):
        if not (math.isfinite(accumulated[i]) and all(math.isfinite(row[i]) for row in micro)):
            skip_reason = f"non-finite gradient norm in layer '{layers[i].name}' (e.g. an AMP overflow)"
            break
    if not skip_reason and pending.micro_examples is None:
        skip_reason = "examples per micro-batch unknown: the model's forward received no tensor argument"
    return StepRecord(
        step=pending.step,
        micro_examples=examples,
        micro_sq_norms=micro if not skip_reason else (),
        accumulated_sq_norms=accumulated if not skip_reason else (),
        lr=pending.lr,
        unix_ms=pending.unix_ms,
        skipped=bool(skip_reason),
        skip_reason=skip_reason,
    )


def _flat_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D views of two same-shaped tensors pairing the same elements; copies only for odd layouts."""
    if a.is_contiguous() and b.is_contiguous():
        return a.view(-1), b.view(-1)
    if (
        a.dim() == 4
        and a.is_contiguous(memory_format=torch.channels_last)
        and b.is_contiguous(memory_format=torch.channels_last)
    ):
        return a.permute(0, 2, 3, 1).reshape(-1), b.permute(0, 2, 3, 1).reshape(-1)
    return a.reshape(-1), b.reshape(-1)


# Longer fp32 dot products on the CPU are split and summed in fp64: one BLAS dot over 5e7
# elements is off by ~3e-4 relative (vector_norm by ~8e-3); 2^22-element pieces stay near 1e-5.
_CPU_CHUNK = 1 << 22


def _grad_terms(summed: torch.Tensor | None, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(|grad|², ⟨summed, grad⟩) as 0-dim device tensors, accumulated in at least fp32."""
    dtype = grad.dtype
    if (
        (dtype is torch.float32 or dtype is torch.float64)
        and grad.layout is torch.strided
        and grad.is_contiguous()
        and (summed is None or (summed.dtype is dtype and summed.is_contiguous()))
    ):
        # The common case in as few dispatches as possible: it runs per layer per micro-batch.
        h = grad if grad.dim() == 1 else grad.view(-1)
        s = None if summed is None else summed if summed.dim() == 1 else summed.view(-1)
        if h.numel() > _CPU_CHUNK and not h.is_cuda:
            return _chunked_dot(h, h), None if s is None else _chunked_dot(s, h)
        return torch.dot(h, h), None if s is None else torch.dot(s, h)
    return _grad_terms_general(summed, grad)


def _chunked_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, a.numel(), _CPU_CHUNK):
        total += torch.dot(a[start : start + _CPU_CHUNK], b[start : start + _CPU_CHUNK])
    return total


def _grad_terms_general(summed: torch.Tensor | None, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Other layouts and dtypes: half/bf16 (fp32 accumulation), complex, channels-last."""
    if grad.layout != torch.strided or (summed is not None and summed.layout != torch.strided):
        raise NotImplementedError(f"{grad.layout} gradients are not supported in norms mode yet")
    wide = torch.float64 if grad.dtype == torch.float64 else torch.float32
    sq_norm = torch.linalg.vector_norm(grad, dtype=None if grad.is_complex() else wide).square()
    if summed is None:
        return sq_norm, None
    a, b = _flat_pair(summed, grad)
    if a.is_complex() or b.is_complex():
        return sq_norm, torch.vdot(a, b).real
    if a.dtype != wide or b.dtype != wide:
        a, b = a.to(wide), b.to(wide)  # half/bf16: a transient copy buys an fp32 dot
    return sq_norm, torch.dot(a, b)


def _leading_dim(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """Dim 0 of the first tensor argument (looking one level into lists, tuples and dicts)."""
    for value in (*args, *kwargs.values()):
        candidates = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else (value,)
        for item in candidates:
            if isinstance(item, torch.Tensor) and item.dim() >= 1:
                return int(item.shape[0])
    return None


class _StepBuffer:
    """Device-side results of one measured step, filled by the hooks."""

    __slots__ = ("sq_norms", "cross", "examples", "task_micro", "running", "contributed", "calls")

    def __init__(self, n_layers: int) -> None:
        self.sq_norms: list[list[torch.Tensor | None]] = []  # [micro-batch][layer]: |h_j|²
        self.cross: list[list[torch.Tensor | None]] = []  # [micro-batch][layer]: ⟨S_{j-1}, h_j⟩
        self.examples: list[int] = []  # dim 0 of each grad-enabled forward, in order
        self.task_micro: dict[int, int] = {}  # graph task id → micro-batch index
        self.running: list[int] = []  # graph tasks whose backward has not finished
        self.contributed = [False] * n_layers
        self.calls = [0] * n_layers  # per-layer gradient count (only without graph task ids)

    def add_micro(self, n_layers: int) -> int:
        self.sq_norms.append([None] * n_layers)
        self.cross.append([None] * n_layers)
        return len(self.sq_norms) - 1


class Meter:
    """Registers the hooks on the model and optimizer and turns them into PendingSteps."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        params: Sequence[nn.Parameter],
        *,
        every: int,
        world_size: int,
        guard: Guard,
        submit: Callable[[PendingStep], None],
    ) -> None:
        self._model = model
        self._optimizer = optimizer
        self._params = list(params)
        self._every = every
        self._world_size = world_size
        self._guard = guard
        self._submit = submit
        self._handles: list[RemovableHandle] = []  # per-step hooks: gradients and forward
        self._step_handle: RemovableHandle | None = None
        self._grad_hooks: list[Callable[[torch.Tensor], None]] = []
        self._forward_hook = _Hook(self._on_forward)
        self._hook_dicts_created: list[nn.Parameter] = []  # their _backward_hooks was None before us
        self._lock = threading.Lock()
        self._zeros: dict[torch.device, torch.Tensor] = {}
        self._warned: set[str] = set()
        self._active = False
        self._measuring = False  # read first thing by every hook: the fast path when off
        self._buffer: _StepBuffer | None = None
        self.steps_seen = 0
        self.steps_measured = 0
        guard.on_trip(self._switch_off)

    # ------------------------------------------------------------ registration

    def attach(self) -> None:
        """Hooks optimizer.step() for good; the gradient and forward hooks only around measured steps."""
        self._grad_hooks = [self._grad_hook(index, param) for index, param in enumerate(self._params)]
        self._step_handle = self._optimizer.register_step_pre_hook(_Hook(self._on_step))
        self._active = True
        try:
            self._begin_step()
        except Exception:
            self.detach()
            raise

    def detach(self) -> None:
        """Removes every hook; the model and optimizer are left as they were before attach()."""
        self._active = False
        self._measuring = False
        self._buffer = None
        self._disarm()
        if self._step_handle is not None:
            self._step_handle.remove()
            self._step_handle = None

    def _arm(self) -> None:
        """Registers the per-step hooks (unmeasured steps run with none of them)."""
        try:
            for param, hook in zip(self._params, self._grad_hooks):
                if param._backward_hooks is None:
                    self._hook_dicts_created.append(param)
                self._handles.append(param.register_hook(hook))
            self._handles.append(self._model.register_forward_pre_hook(self._forward_hook, with_kwargs=True))
        except Exception:
            self._disarm()
            raise

    def _disarm(self) -> None:
        for handle in reversed(self._handles):
            handle.remove()
        self._handles.clear()
        for param in self._hook_dicts_created:
            if param._backward_hooks is not None and len(param._backward_hooks) == 0:
                param._backward_hooks = None  # also drops the C++ hook that would call the empty dict
        self._hook_dicts_created.clear()

    def _switch_off(self) -> None:
        self._active = False
        self._measuring = False

    # ------------------------------------------------------------ hooks

    def _grad_hook(self, index: int, param: nn.Parameter) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            if self._measuring:
                try:
                    self._on_grad(index, param, grad)
                except Exception as error:
                    self._guard.trip("the gradient hook", error)
            return None  # the gradient is never replaced

        return hook

    def _on_grad(self, index: int, param: nn.Parameter, grad: torch.Tensor) -> None:
        buffer = self._buffer
        if buffer is None:
            return
        micro = buffer.task_micro.get(_graph_task_id()) if _graph_task_id is not None else None
        if micro is None:
            micro = self._micro_index(buffer, index, param)
            buffer = self._buffer or buffer  # _micro_index starts a fresh buffer after a reset
        sq_norm, cross = _grad_terms(param.grad, grad)
        sq_norms = buffer.sq_norms[micro]
        earlier = sq_norms[index]
        if earlier is None:
            sq_norms[index] = sq_norm
            buffer.cross[micro][index] = cross
        else:
            # A second gradient in one micro-batch (a backward nested in it, e.g. reentrant
            # checkpointing of a shared weight): the accumulated norm stays exact; the
            # micro-batch norm misses only the cross term between the two.
            sq_norms[index] = earlier + sq_norm
            if cross is not None:
                previous = buffer.cross[micro][index]
                buffer.cross[micro][index] = cross if previous is None else previous + cross
        buffer.contributed[index] = True

    def _micro_index(self, buffer: _StepBuffer, index: int, param: nn.Parameter) -> int:
        """Which micro-batch (backward pass) of the step this gradient belongs to."""
        if _graph_task_id is None:
            micro = buffer.calls[index]
            buffer.calls[index] += 1
            while len(buffer.sq_norms) <= micro:
                buffer.add_micro(len(self._params))
            return micro
        task = _graph_task_id()
        known = buffer.task_micro.get(task)
        if known is not None:
            return known
        with self._lock:
            known = buffer.task_micro.get(task)
            if known is not None:
                return known
            if buffer.running:
                # A backward inside a running one (reentrant checkpointing): same micro-batch.
                micro = buffer.task_micro[buffer.running[0]]
            else:
                if buffer.sq_norms and param.grad is None and buffer.contributed[index]:
                    buffer = self._restart(buffer)
                micro = buffer.add_micro(len(self._params))
            buffer.task_micro[task] = micro
            buffer.running.append(task)
        torch.autograd.Variable._execution_engine.queue_callback(functools.partial(self._task_done, buffer, task))
        return micro

    def _task_done(self, buffer: _StepBuffer, task: int) -> None:
        try:
            with self._lock:
                if task in buffer.running:
                    buffer.running.remove(task)
        except Exception as error:  # runs inside autograd: must never raise
            self._guard.trip("the backward-end callback", error)

    def _restart(self, stale: _StepBuffer) -> _StepBuffer:
        """`.grad` was reset without an optimizer step (e.g. GradScaler skipped it): start over."""
        self._warn_once(
            "restart",
            logging.INFO,
            "noisescope: gradients were reset without an optimizer step (e.g. AMP's GradScaler skipped "
            "a step); the partial measurement of that step was discarded.",
        )
        fresh = _StepBuffer(len(self._params))
        fresh.examples = stale.examples[len(stale.sq_norms) :]
        self._buffer = fresh
        return fresh

    def _on_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._measuring and module is self._model and torch.is_grad_enabled():
            try:
                examples = _leading_dim(args, kwargs)
                buffer = self._buffer
                if examples is not None and buffer is not None:
                    buffer.examples.append(examples)
            except Exception as error:
                self._guard.trip("the forward pre-hook", error)
        return None

    def _on_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        try:
            step = self.steps_seen
            self.steps_seen += 1
            buffer = self._buffer
            if self._measuring and buffer is not None:
                self._close(step, buffer)
            self._begin_step()
        except Exception as error:
            self._guard.trip("the optimizer step hook", error)
        return None

    # ------------------------------------------------------------ step boundaries

    def _begin_step(self) -> None:
        measuring = self._active and self.steps_seen % self._every == 0
        if measuring and not self._handles:
            self._arm()
        elif not measuring and self._handles:
            self._disarm()
        self._buffer = _StepBuffer(len(self._params)) if measuring else None
        self._measuring = measuring

    def _close(self, step: int, buffer: _StepBuffer) -> None:
        unix_ms = time.time() * 1000.0
        k = len(buffer.sq_norms)
        if k == 0:
            self._warn_once(
                "no-grad",
                logging.WARNING,
                "noisescope: optimizer.step() ran (step %d) without any gradient reaching the watched "
                "model's parameters; such steps are not measured.",
                step,
            )
            return
        if k == 1 and self._world_size == 1:
            self._warn_once(
                "one-scale",
                logging.WARNING,
                "noisescope: each optimizer step here is one micro-batch on one process, so there is no "
                "second batch size to compare and no noise-scale estimate (the sidecar reports 'no "
                "estimate' too). Gradient accumulation (several backward() calls per optimizer.step()) "
                "or DDP gives one; per-example mode will, once it lands.",
            )
        self.steps_measured += 1
        values = self._stack(buffer, k)
        host, ready = _to_host(values)
        self._submit(
            PendingStep(
                step=step,
                micro_batches=k,
                micro_examples=self._examples(buffer, k, step),
                values=host,
                ready=ready,
                lr=_learning_rate(self._optimizer),
                unix_ms=unix_ms,
            )
        )

    def _stack(self, buffer: _StepBuffer, k: int) -> torch.Tensor:
        """One float64 tensor on the device: k·L squared norms, then L accumulated ones."""
        n_layers = len(self._params)
        first = next(t for row in buffer.sq_norms for t in row if t is not None)
        zero = self._zeros.get(first.device)
        if zero is None:
            zero = self._zeros[first.device] = torch.zeros((), dtype=torch.float32, device=first.device)
        terms = [zero if t is None else t for rows in (buffer.sq_norms, buffer.cross) for row in rows for t in row]
        try:
            stacked = torch.stack(terms)
        except RuntimeError:  # layers on several devices: gather on the first one
            stacked = torch.stack([t.to(first.device) for t in terms])
        sq_norms, cross = stacked.to(torch.float64).view(2, k, n_layers).unbind(0)
        accumulated = (sq_norms + 2.0 * cross).sum(0).clamp_min_(0.0)  # |S|² ≈ 0 may round below zero
        return torch.cat((sq_norms.reshape(-1), accumulated))

    def _examples(self, buffer: _StepBuffer, k: int, step: int) -> list[int] | None:
        """Examples per micro-batch: the j-th grad-enabled forward pairs with the j-th backward."""
        seen = buffer.examples
        if len(seen) == k:
            return seen
        if not seen:
            self._warn_once(
                "no-examples",
                logging.WARNING,
                "noisescope: the watched model's forward received no tensor argument, so the examples "
                "per micro-batch are unknown; steps are sent as skipped.",
            )
            return None
        picked = seen[-k:] if len(seen) > k else seen + [seen[-1]] * (k - len(seen))
        self._warn_once(
            "examples-mismatch",
            logging.WARNING,
            "noisescope: step %d had %d forward passes with gradients enabled but %d backward passes into "
            "the watched parameters; examples per micro-batch are taken from the last forward passes (%s). "
            "Run evaluation forwards under torch.no_grad() to keep the two paired.",
            step,
            len(seen),
            k,
            picked,
        )
        return picked

    def _warn_once(self, key: str, level: int, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.log(level, message, *args)


def _inert_hook(*args: Any, **kwargs: Any) -> None:
    return None


def _inert() -> Callable[..., None]:
    return _inert_hook


class _Hook:
    """Our module/optimizer hook; copies (copy.deepcopy, pickling, torch.save) get a no-op instead.

    A bound method would drag the Meter (threads, locks) into every deepcopy of the model,
    e.g. an EMA copy, and fail there.
    """

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[..., None]) -> None:
        self._fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return self._fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Callable[[], Callable[..., None]], tuple[()]]:
        return (_inert, ())

    def __deepcopy__(self, memo: dict[int, Any]) -> Callable[..., None]:
        return _inert_hook


def _to_host(values: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Starts the one device→host copy of a step; the training thread never waits for it."""
    if values.device.type == "cpu":
        return values, None
    if values.is_cuda:
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        host.copy_(values, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(values.device))
        return host, ready
    return values.to("cpu"), None  # other accelerators: a plain (synchronising) copy


def _learning_rate(optimizer: torch.optim.Optimizer) -> float:
    try:
        return float(optimizer.param_groups[0]["lr"])
    except (KeyError, IndexError, TypeError, ValueError):
        return math.nan
