"""Norms-mode measurement: per-micro-batch and accumulated squared gradient norms, per layer.

A parameter's tensor hook sees micro-batch j's own gradient h_j before AccumulateGrad adds it
to `.grad`. At the end of a backward (a callback queued on the autograd engine) one fused norm
over every `.grad` gives |S_j|², the accumulated norm so far, measured before any clipping
touches `.grad`. Only the step's last backward needs it: it is taken at the backward expected
to be the last (the previous measured step's count, or the one the accumulation helper set)
and at any later one; a step that ends sooner is sent as skipped. The same fused call takes
|h_j|² of the small gradients, whose references the hooks held until then; a large h_j's norm
is taken in its hook (one read, no reference kept). When `.grad` was None before the first
micro-batch, S_1 = h_1: that backward's micro-batch norms are its `.grad` norms, and no
reference is held (one would make AccumulateGrad copy h_1 instead of adopting it).
"""
from __future__ import annotations

import functools
import logging
import math
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ._guard import Guard
from ._compiled import register_forward_pre_hook

if TYPE_CHECKING:
    from ._ddp import DdpSource
    from ._dense import DenseCapture
    from ._fsdp import FsdpSource
    from ._per_example import PerExample

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
    L accumulated ones: Python floats when the gradients live on the CPU; on CUDA a float64
    pinned host buffer still being filled by an asynchronous copy, readable once `ready`
    (a CUDA event) has completed.
    """

    step: int
    micro_batches: int
    micro_examples: list[int] | None  # None: the forward passes gave no batch size
    values: torch.Tensor | list[float]
    ready: Any
    lr: float
    unix_ms: float
    skip_reason: str = ""  # set: a skipped step, `values` unused
    per_example: bool = False  # `values` ends with k·L per-example sums ([micro-batch][layer])
    per_example_sampled: bool = False  # those sums are sampled estimates (per_example_sample)
    dense: Any = None  # dense mode: the step's DenseStep (its gradients, sent as chunks)
    reduced: bool = False  # `values` ends with L all-reduced squared norms (DDP)
    reduced_is_shard: bool = False  # FSDP: those are this rank's shard of the reduced gradient
    # AMP: `values` ends with the GradScaler's loss scale S; every norm taken in the backward is divided by S².
    loss_scaled: bool = False
    reduced_scaled: bool = False  # the reduced norms were taken in the backward too (DDP's hook), else after unscale_


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
    # [micro-batch][layer]: Σ over the micro-batch's examples of |example's contribution|²; () if none.
    per_example_sums: tuple[tuple[float, ...], ...] = ()
    per_example_sampled: bool = False  # per_example_sums are sampled estimates, not exact
    dense: Any = None  # dense mode: the step's DenseStep
    # [layer]: |the all-reduced gradient|² (DDP: the ranks' average, the optimizer's units); () if none.
    reduced_sq_norms: tuple[float, ...] = ()
    reduced_is_shard: bool = False  # FSDP: reduced_sq_norms are this rank's shard; the sidecar sums ranks


def finish(pending: PendingStep, layers: Sequence[LayerInfo]) -> StepRecord:
    """Sender thread: waits for the device copy and turns it into a checked StepRecord."""
    if pending.skip_reason:
        return StepRecord(
            step=pending.step,
            micro_examples=tuple(pending.micro_examples or ()),
            micro_sq_norms=(),
            accumulated_sq_norms=(),
            lr=pending.lr,
            unix_ms=pending.unix_ms,
            skipped=True,
            skip_reason=pending.skip_reason,
            dense=pending.dense,
        )
    if pending.ready is not None:
        pending.ready.synchronize()  # blocks the sender thread only, never training
    k, n_layers = pending.micro_batches, len(layers)
    flat: list[float] = pending.values.tolist() if isinstance(pending.values, torch.Tensor) else pending.values
    if pending.loss_scaled:
        flat = _unscaled(flat, k, n_layers, pending)
    micro = tuple(tuple(flat[j * n_layers : (j + 1) * n_layers]) for j in range(k))
    accumulated = tuple(flat[k * n_layers : (k + 1) * n_layers])
    per_example = tuple(
        tuple(flat[(k + 1 + j) * n_layers : (k + 2 + j) * n_layers]) for j in range(k if pending.per_example else 0)
    )
    after = (k + 1 + (k if pending.per_example else 0)) * n_layers
    reduced = tuple(flat[after : after + n_layers]) if pending.reduced else ()
    if per_example and not all(map(math.isfinite, flat[(k + 1) * n_layers : after])):
        per_example = ()  # an overflow that did not reach the norms; the step keeps its other figures
    examples = tuple(pending.micro_examples or ())
    skip_reason = ""
    # One pass in C over every norm; the layer-by-layer search only when one is not finite.
    if not (all(map(math.isfinite, flat[: (k + 1) * n_layers])) and all(map(math.isfinite, reduced))):
        for i in range(n_layers):
            if not (
                math.isfinite(accumulated[i])
                and all(math.isfinite(row[i]) for row in micro)
                and (not reduced or math.isfinite(reduced[i]))
            ):
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
        per_example_sums=per_example if not skip_reason else (),
        per_example_sampled=pending.per_example_sampled and bool(per_example) and not skip_reason,
        dense=pending.dense,
        reduced_sq_norms=reduced if not skip_reason else (),
        reduced_is_shard=pending.reduced_is_shard,
    )


def _unscaled(flat: list[float], k: int, n_layers: int, pending: PendingStep) -> list[float]:
    """The norms with the AMP loss scale (the last value) divided out: S² from every squared norm of the backward."""
    scale = flat[-1]
    inverse = 1.0 / (scale * scale) if math.isfinite(scale) and scale > 0 else math.nan
    body = flat[:-1]
    ends = len(body) - (n_layers if pending.reduced and not pending.reduced_scaled else 0)
    return [v * inverse for v in body[:ends]] + body[ends:]


# On the CPU, fp32 sums of squares are taken over pieces and added in fp64: one BLAS dot over
# 2^22 elements is off by ~1e-5 relative (2^18: ~3e-7), torch's fp32 norm kernel by ~2e-4
# (2^16: ~4e-7). Pieces this size cost ~2% in speed.
_CPU_PIECE = 1 << 18  # elements per dot
# The largest gradient the fused norm takes whole on the CPU, and that a hook may hold on to
# until the end of its backward (so the held memory stays small).
_SMALL = 1 << 16


def _sq_norm(grad: torch.Tensor) -> float | torch.Tensor:
    """|grad|² accumulated in at least fp32: a float for CPU tensors, a 0-dim tensor (no sync) elsewhere."""
    dtype = grad.dtype
    if (dtype is torch.float32 or dtype is torch.float64) and grad.layout is torch.strided and grad.is_contiguous():
        # The common case in as few dispatches as possible: it runs in the hook of every large gradient.
        h = grad if grad.dim() == 1 else grad.view(-1)
        if not grad.is_cpu:
            return torch.dot(h, h)
        if h.numel() <= _CPU_PIECE:
            return torch.dot(h, h).item()
        return _cpu_sq_norm(h)
    return _sq_norm_general(grad)


def _cpu_sq_norm(h: torch.Tensor) -> float:
    """A 1-D CPU tensor's |h|², piece by piece, summed in fp64."""
    total = 0.0
    for piece in h.split(_CPU_PIECE):
        if piece.is_complex():
            total += torch.vdot(piece, piece).real.item()
        else:
            if piece.dtype is not torch.float32 and piece.dtype is not torch.float64:
                piece = piece.float()  # half/bf16: a transient 1 MiB copy buys an fp32 dot
            total += torch.dot(piece, piece).item()
    return total


def _sq_norm_general(grad: torch.Tensor) -> float | torch.Tensor:
    """Other layouts and dtypes: half/bf16 (fp32 accumulation), complex, channels-last, strided."""
    if grad.layout != torch.strided:
        raise NotImplementedError(f"{grad.layout} gradients are not supported in norms mode yet")
    if grad.is_cpu:
        return _cpu_sq_norm(_flat(grad))
    if grad.is_complex():
        return torch.linalg.vector_norm(grad).square()
    wide = torch.float64 if grad.dtype == torch.float64 else torch.float32
    return torch.linalg.vector_norm(grad, dtype=wide).square()


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of `t` (its elements in any order); copies only for odd layouts."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)
    return t.reshape(-1)


def _grad_sq_norms(grads: Sequence[torch.Tensor | None]) -> list[float | torch.Tensor | None]:
    """|g|² for every tensor, as `_sq_norm` gives it: on the CPU `_sq_norm_alone`'s, and one fused
    `torch._foreach_norm` per device and dtype over the accelerator tensors of the common dtypes."""
    out: list[float | torch.Tensor | None] = [None] * len(grads)
    device: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, g in enumerate(grads):
        if g is None:
            continue
        if not g.is_cpu and (g.dtype is torch.float32 or g.dtype is torch.float64) and g.layout is torch.strided:
            device.setdefault((g.device, g.dtype), []).append(i)
            continue
        out[i] = _sq_norm_alone(g)
    for indices in device.values():
        norms = torch._foreach_norm([grads[i] for i in indices])  # type: ignore[misc]
        for i, sq in zip(indices, torch.stack(norms).double().square().unbind()):
            out[i] = sq
    return out


def _sq_norm_alone(grad: torch.Tensor) -> float | torch.Tensor:
    """|grad|² as `_sq_norm` gives it, but for a small fp32/fp64 tensor its vector_norm squared (fewer dispatches
    than pieces of dots). It is what `torch._foreach_norm` computes on the CPU (one vector_norm per tensor), less
    its stack: that cost ~20 µs more for the 512 MLP's 4 small gradients just after a backward (cold caches:
    52 vs 31 µs of thread CPU, medians of 600)."""
    if grad.numel() <= _SMALL and (grad.dtype is torch.float32 or grad.dtype is torch.float64) and grad.layout is torch.strided:
        norm = torch.linalg.vector_norm(grad).item()
        return norm * norm
    return _sq_norm(grad)


def _leading_dim(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """Dim 0 of the first tensor argument (looking one level into lists, tuples and dicts)."""
    for value in (*args, *kwargs.values()):
        candidates = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else (value,)
        for item in candidates:
            if isinstance(item, torch.Tensor) and item.dim() >= 1:
                return int(item.shape[0])
    return None


Norm = Any  # float | torch.Tensor: a squared norm as _sq_norm gives it


class _StepBuffer:
    """Results of one measured step, filled by the hooks."""

    __slots__ = (
        "sq_norms", "held", "accumulated", "accumulated_at", "fresh", "examples", "task_micro", "running", "calls",
        "reduced", "from_grad",
    )

    def __init__(self) -> None:
        self.sq_norms: list[list[Norm | None]] = []  # [micro-batch][layer]: |h_j|²
        self.held: list[tuple[int, torch.Tensor]] = []  # (layer, small h_j) until its backward ends
        self.accumulated: list[Norm | None] | None = None  # [layer]: |.grad|² after backward `accumulated_at`
        self.accumulated_at = -1
        # `.grad` was None for every parameter when micro-batch 0 began: S_1 = h_1.
        self.fresh = False
        self.examples: list[int] = []  # dim 0 of each grad-enabled forward, in order
        self.task_micro: dict[int, int] = {}  # graph task id → micro-batch index
        self.running: list[int] = []  # graph tasks whose backward has not finished
        self.calls: list[int] = []  # per-layer gradient count (only without graph task ids)
        self.reduced: list[Norm | None] | None = None  # [layer]: DDP fallback: |.grad|² at the optimizer step
        self.from_grad: list[int] = []  # fresh step: layers whose norm the backward's end reads from .grad


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
        per_example: PerExample | None = None,
        per_example_auto: bool = False,
        names: Sequence[str] = (),
        one_scale_hint: str = "",
        dense: DenseCapture | None = None,
        ddp: DdpSource | None = None,
        reduced_at_step: str = "",
        fsdp: FsdpSource | None = None,
        loss_scale: Callable[[], Norm | None] | None = None,
        first_step: int = 0,
        wanted: Callable[[], bool] | None = None,
        count_dropped: Callable[[int], None] | None = None,
    ) -> None:
        self._model = model
        self._first_step = first_step  # a resumed training's step numbers continue from its checkpoint
        # The sender knows no sidecar is there: a due step is then not measured at all, only counted dropped.
        self._wanted = wanted
        self._count_dropped = count_dropped
        self._unwanted = False  # this step was due but nobody listens
        self._loss_scale = loss_scale  # AMP: the GradScaler's current scale (None: not scaling)
        # DDP: the rank-local and all-reduced norms from our communication hook; or, where the
        # model has a hook of the user's, `reduced_at_step`: "grad" reads the reduced one from .grad at
        # the step; "skip" (gradient_as_bucket_view: no rank-local figure) sends measured steps as skipped.
        self._ddp = ddp
        self._fsdp = fsdp  # FSDP2: every figure comes from it (no backward reaches the sharded parameters)
        # A fresh step's norms are taken in the gradient hooks (DDP's and FSDP's come from their own hooks).
        self._fresh_in_hook = ddp is None and fsdp is None and not reduced_at_step
        self._reduced_at_step = reduced_at_step
        self._dense = dense  # dense mode: each micro-batch's gradient is also copied out
        self._optimizer = optimizer
        self._params = list(params)
        self._every = every
        self._world_size = world_size
        self._guard = guard
        self._submit = submit
        self._per_example = per_example  # None: micro-batches and ranks are the only batch scales
        # source="auto": per-example work only on steps expected to have one micro-batch (the
        # cheapest source that exists wins; accumulation already gives a second scale for free).
        self._per_example_auto = per_example_auto
        self._one_scale_hint = one_scale_hint
        self._names = list(names)
        self._handles: list[RemovableHandle] = []  # per-step hooks: gradients and forward
        self._step_handle: RemovableHandle | None = None
        self._grad_hooks: list[Callable[[torch.Tensor], None]] = []
        self._forward_hook = _ModuleHook(self._on_forward)
        # Registered alone on due steps nobody listened for: the sidecar may be back by the step's first forward.
        self._retry_hook = _ModuleHook(self._retry_at_forward)
        self._retry_handle: Any = None
        self._retry_open = False  # the step's first grad-enabled forward has not run yet
        self._hook_dicts_created: list[nn.Parameter] = []  # their _backward_hooks was None before us
        self._hook_keys: list[int] = []  # our key in each parameter's _backward_hooks, unique as a handle's id
        self._own_dicts: list[OrderedDict[int, Any]] = []  # per parameter: {our key: our hook}, set as _backward_hooks
        self._armed_dicts: list[int] = []  # parameters whose _backward_hooks is ours now
        self._forward_key = _reserve_hook_id()
        self._forward_armed = False  # our forward pre-hook is in the model's dicts (not compiled)
        self._armed = False
        self._lock = threading.Lock()
        self._zeros: dict[torch.device, torch.Tensor] = {}
        self._warned: set[str] = set()
        self._active = False
        self._measuring = False  # read first thing by every hook: the fast path when off
        self._plain = False  # this step is unmeasured and needs nothing of _begin_step at its end (see there)
        self._micro_batches: int | None = None  # in the last measured step: when to expect the last backward
        # per_example_sample="auto" thinning (Budget.stride): the due steps left in this block, the one measured.
        self._thin_left = self._thin_pick = self._thin_stride = 0
        self._thin_random = random.Random(0x6E5C)  # seeded: which steps are measured is the same run to run
        if per_example is not None and per_example.budget is not None:
            per_example.budget.every = every
            if world_size > 1:
                per_example.budget.MAX_STRIDE = 1  # ranks must measure the same steps: each rank's budget is its own
        self._buffer: _StepBuffer | None = None
        self.steps_seen = 0
        self.steps_measured = 0
        self.examples_fed = False  # an integration gives each micro-batch's examples (feed_examples)
        guard.on_trip(self._switch_off)

    # ------------------------------------------------------------ registration

    def attach(self) -> None:
        """Hooks optimizer.step() for good; the gradient and forward hooks only around measured steps."""
        self._grad_hooks = [self._grad_hook(index, param) for index, param in enumerate(self._params)]
        self._hook_keys = [_reserve_hook_id() for _ in self._params]
        self._own_dicts = [OrderedDict(((key, hook),)) for key, hook in zip(self._hook_keys, self._grad_hooks)]
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
        self._unwanted = False
        if self._retry_handle is not None:
            self._retry_handle.remove()
            self._retry_handle = None
        if self._ddp is not None:
            self._ddp.detach()
        if self._fsdp is not None:
            self._fsdp.detach()
        if self._step_handle is not None:
            self._step_handle.remove()
            self._step_handle = None

    def _arm(self) -> None:
        """Registers the per-step hooks (unmeasured steps run with none of them).

        Where a parameter has no tensor hooks and the model is not compiled, our dicts go straight into
        `_backward_hooks` and `_forward_pre_hooks` (what register_hook and register_forward_pre_hook do,
        less their handles and new dicts: arming and disarming were ~70 µs of a measured step); setting
        `_backward_hooks` installs the C++ hook that calls the dict, setting None drops it again.
        """
        self._armed = True
        try:
            for index, (param, hook) in enumerate(zip(self._params, self._grad_hooks)):
                hooks = param._backward_hooks
                if hooks is None and type(param) is nn.Parameter and param.requires_grad and param.grad_fn is None:
                    param._backward_hooks = self._own_dicts[index]
                    self._armed_dicts.append(index)
                    continue
                if hooks is None:
                    self._hook_dicts_created.append(param)
                self._handles.append(param.register_hook(hook))
            model = self._model
            if getattr(model, "_compiled_call_impl", None) is None and type(model._forward_pre_hooks) is OrderedDict:
                model._forward_pre_hooks[self._forward_key] = self._forward_hook
                model._forward_pre_hooks_with_kwargs[self._forward_key] = True
                self._forward_armed = True
            else:  # outside the compiled call for a module.compile()d model (_compiled.py)
                self._handles.append(register_forward_pre_hook(model, self._forward_hook))
        except Exception:
            self._disarm()
            raise

    def _disarm(self) -> None:
        self._armed = False
        if self._per_example is not None:
            self._per_example.disarm()
        for handle in reversed(self._handles):
            handle.remove()
        self._handles.clear()
        if self._forward_armed:
            self._forward_armed = False
            self._model._forward_pre_hooks.pop(self._forward_key, None)
            self._model._forward_pre_hooks_with_kwargs.pop(self._forward_key, None)
        for index in self._armed_dicts:
            param, hooks, key = self._params[index], self._own_dicts[index], self._hook_keys[index]
            if param._backward_hooks is hooks and len(hooks) == 1:
                param._backward_hooks = None
            else:  # someone registered a hook of theirs into it meanwhile: it is theirs now, less ours
                hooks.pop(key, None)
                self._own_dicts[index] = OrderedDict(((key, self._grad_hooks[index]),))
        self._armed_dicts.clear()
        for param in self._hook_dicts_created:
            if param._backward_hooks is not None and len(param._backward_hooks) == 0:
                param._backward_hooks = None  # also drops the C++ hook that would call the empty dict
        self._hook_dicts_created.clear()

    def _switch_off(self) -> None:
        self._active = False
        self._measuring = False
        self._unwanted = False

    # ------------------------------------------------------------ hooks

    def _grad_hook(self, index: int, param: nn.Parameter) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            if self._measuring:
                try:
                    buffer = self._buffer
                    if buffer is None:
                        return None
                    micro = buffer.task_micro.get(_graph_task_id()) if _graph_task_id is not None else None
                    if micro is None:
                        micro = self._micro_index(buffer, index, param)
                        buffer = self._buffer or buffer  # _micro_index starts a fresh buffer after a reset
                    if self._dense is not None:
                        # AMP: the scale divided out (a power of two: exact) before the gradient leaves.
                        scale = self._loss_scale() if self._loss_scale is not None else None
                        self._dense.take(micro, index, grad if scale is None else grad / scale)
                    if micro == 0 and buffer.fresh:
                        # S_1 = h_1, and .grad will be this very tensor (or a copy in the same order): on the
                        # CPU its norm is taken now, the figure the backward's end would read from .grad (no
                        # reference kept: AccumulateGrad adopts it). Elsewhere, or a second gradient, .grad.
                        row = buffer.sq_norms[0]
                        if (
                            row[index] is None and self._fresh_in_hook and grad.is_cpu and grad.layout is torch.strided
                            and grad.is_contiguous() and param.is_contiguous()
                        ):
                            row[index] = _sq_norm_alone(grad)
                        else:
                            buffer.from_grad.append(index)
                        return None
                    if grad.numel() <= _SMALL:
                        buffer.held.append((index, grad))  # its norm joins the fused one at the end
                    else:
                        row = buffer.sq_norms[micro]
                        earlier = row[index]
                        # A second gradient in one micro-batch (a backward nested in it, e.g. reentrant
                        # checkpointing of a shared weight) adds its own norm: the micro-batch norm misses
                        # the cross term between the two; the accumulated one stays exact.
                        row[index] = _sq_norm(grad) if earlier is None else earlier + _sq_norm(grad)
                except Exception as error:
                    self._guard.trip("the gradient hook", error)
            return None  # the gradient is never replaced

        return hook

    def _micro_index(self, buffer: _StepBuffer, index: int, param: nn.Parameter) -> int:
        """Which micro-batch (backward pass) of the step this gradient belongs to."""
        n_layers = len(self._params)
        if _graph_task_id is None:
            if not buffer.calls:
                buffer.calls = [0] * n_layers
            micro = buffer.calls[index]
            buffer.calls[index] += 1
            while len(buffer.sq_norms) <= micro:
                self._new_micro(buffer)
                self._queue_backward_end(buffer, None, len(buffer.sq_norms) - 1)
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
                if param.grad is None and any(row[index] is not None for row in buffer.sq_norms):
                    buffer = self._restart(buffer)
                micro = self._new_micro(buffer)
            buffer.task_micro[task] = micro
            buffer.running.append(task)
        self._queue_backward_end(buffer, task, micro)
        return micro

    def _new_micro(self, buffer: _StepBuffer) -> int:
        if not buffer.sq_norms:
            # The first gradient of a backward comes before any AccumulateGrad of it has run.
            buffer.fresh = all(p.grad is None for p in self._params)
        buffer.sq_norms.append([None] * len(self._params))
        if len(buffer.sq_norms) == 2 and self._per_example_auto and self._per_example is not None:
            # A second micro-batch: accumulation gives this step its second scale, and auto drops
            # the per-example sums (see _close), so stop computing them now.
            self._per_example.begin_step(False)
        return len(buffer.sq_norms) - 1

    def _queue_backward_end(self, buffer: _StepBuffer, task: int | None, micro: int) -> None:
        torch.autograd.Variable._execution_engine.queue_callback(
            functools.partial(self._backward_done, buffer, task, micro)
        )

    def _backward_done(self, buffer: _StepBuffer, task: int | None, micro: int) -> None:
        """Runs when a backward has finished: norms of the held h_j, and |S_j|² if this may be the step's last."""
        try:
            with self._lock:
                if task is not None and task in buffer.running:
                    buffer.running.remove(task)
                if buffer.running or buffer is not self._buffer:
                    return  # an inner (reentrant) backward, or a step already closed or restarted
            held, buffer.held = buffer.held, []
            n_layers = len(self._params)
            row = buffer.sq_norms[micro]
            grad_is_h = micro == 0 and buffer.fresh  # .grad is h_1 itself
            expected = self._micro_batches
            if grad_is_h and self._fresh_in_hook:
                # The hooks took the norms; .grad is read only where they could not (see the hook).
                again = buffer.from_grad
                missing = [i for i, sq_norm in enumerate(row) if sq_norm is None or (again and i in again)]
                if missing:
                    for i, sq_norm in zip(missing, _grad_sq_norms([self._params[i].grad for i in missing])):
                        row[i] = sq_norm
                buffer.accumulated, buffer.accumulated_at = list(row), micro
                return
            if grad_is_h or expected is None or micro >= expected - 1:
                # NB: under DDP with gradient_as_bucket_view the last backward's `.grad` is being
                # all-reduced here; DDP support takes the local norm from its communication hook.
                norms = _grad_sq_norms([p.grad for p in self._params] + [h for _, h in held])
                buffer.accumulated, buffer.accumulated_at = norms[:n_layers], micro
                if grad_is_h:
                    row[:] = norms[:n_layers]
                    return
                held_norms = norms[n_layers:]
            else:  # not the step's last backward, if it keeps the last step's count: no |S_j|²
                held_norms = _grad_sq_norms([h for _, h in held]) if held else []
            for (index, _), sq_norm in zip(held, held_norms):
                earlier = row[index]
                row[index] = sq_norm if earlier is None else earlier + sq_norm
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
        fresh = _StepBuffer()
        fresh.examples = stale.examples[len(stale.sq_norms) :]
        if self._per_example is not None:
            self._per_example.restart(len(stale.sq_norms))
        if self._dense is not None:
            self._dense.restart()
        self._buffer = fresh
        return fresh

    def _on_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._measuring and module is self._model and torch.is_grad_enabled() and not self.examples_fed:
            self._count_examples(args, kwargs)
        return None

    def _retry_at_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A due step begun while no sidecar was there: measured after all if one is back by its first forward."""
        if not (self._unwanted and self._retry_open) or module is not self._model or not torch.is_grad_enabled():
            return None
        self._retry_open = False
        try:
            if self.examples_fed or self._wanted is None or not self._wanted():
                return None  # (an integration feeding examples fed this micro-batch's already)
            self._begin_step()  # every hook armed before this first forward runs
            self._on_forward(module, args, kwargs)  # the forward hook just registered misses this call
        except Exception as error:
            self._guard.trip("the forward pre-hook", error)
        return None

    def feed_examples(self, batch: Any) -> None:
        """An integration's micro-batch, just before its forward: examples from it (dim 0 of its first tensor),
        instead of the model's forward (a LightningModule's training_step need not call its own forward)."""
        self.examples_fed = True
        if self._measuring and torch.is_grad_enabled():
            self._count_examples((batch,), {})

    def external_steps(self) -> Callable[[], None]:
        """An integration marks each step's end itself: optimizer.step()'s pre-hook no longer does (Lightning
        runs the last micro-batch's forward and backward in a closure inside optimizer.step())."""
        if self._step_handle is not None:
            self._step_handle.remove()
            self._step_handle = None
        return functools.partial(self._on_step, self._optimizer, (), {})

    def _count_examples(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            examples = _leading_dim(args, kwargs)
            buffer = self._buffer
            if examples is not None and buffer is not None:
                buffer.examples.append(examples)
            if self._per_example is not None:
                self._per_example.begin_forward(examples)
        except Exception as error:
            self._guard.trip("the forward pre-hook", error)

    def _on_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        try:
            step = self._first_step + self.steps_seen
            self.steps_seen += 1
            if self._plain and (step + 1) % self._every:
                return None  # a plain step ended and the next is not due: _begin_step would change nothing
            buffer = self._buffer
            if self._measuring and buffer is not None:
                if self._reduced_at_step == "grad" and buffer.sq_norms:
                    # DDP with the user's communication hook: .grad is the reduced gradient now (after any clipping).
                    buffer.reduced = _grad_sq_norms([p.grad for p in self._params])
                self._close(step, buffer)
            elif self._unwanted and self._count_dropped is not None:
                self._count_dropped(1)
            self._begin_step()
        except Exception as error:
            self._guard.trip("the optimizer step hook", error)
        return None

    # ------------------------------------------------------------ step boundaries

    @property
    def measuring_one_in(self) -> int:
        """Thinning by the per-example budget: 1 in this many steps due is measured (1: every one)."""
        per_example = self._per_example
        budget = per_example.budget if per_example is not None else None
        return budget.stride if budget is not None else 1

    @property
    def has_per_example(self) -> bool:
        """Per-example norms are on for this watch (auto arms them only on one-micro-batch steps)."""
        return self._per_example is not None

    def expect_micro_batches(self, count: int) -> None:
        """Between steps: the next steps have `count` micro-batches (the accumulation helper changed it).

        The accumulated norm is taken at the backward expected to be the last; without this, a
        step with fewer micro-batches than the last measured one would be sent as skipped.
        """
        self._micro_batches = count
        buffer = self._buffer
        if buffer is not None and not buffer.sq_norms and not buffer.examples:
            try:
                self._choose_per_example(self._measuring)  # the step has not begun: auto decides again
            except Exception as error:
                self._guard.trip("the accumulation count update", error)

    def _begin_step(self) -> None:
        due = self._active and (self._first_step + self.steps_seen) % self._every == 0
        if due and self._per_example is not None:
            due = self._due_after_thinning()
        measuring = due and (self._wanted is None or self._wanted())
        self._unwanted = due and not measuring
        self._retry_open = self._unwanted
        if self._unwanted and self._retry_handle is None:
            self._retry_handle = register_forward_pre_hook(self._model, self._retry_hook)
        elif not self._unwanted and self._retry_handle is not None:
            self._retry_handle.remove()  # before _arm: a compiled module's wrappers come off in reverse order
            self._retry_handle = None
        if measuring and not self._armed:
            self._arm()
        elif not measuring and self._armed:
            self._disarm()
        self._buffer = _StepBuffer() if measuring else None
        if self._dense is not None:
            self._dense.begin_step(measuring)
        if self._ddp is not None:
            self._ddp.begin_step(measuring)
        if self._fsdp is not None:
            self._fsdp.begin_step(measuring)
        self._choose_per_example(measuring)
        self._measuring = measuring
        # Nothing to arm, count or tell anyone at this step's end unless the next step is due.
        self._plain = not (
            measuring or self._unwanted or self._armed or self._retry_handle is not None
            or self._dense is not None or self._ddp is not None or self._fsdp is not None or self._per_example is not None
        )

    def _due_after_thinning(self) -> bool:
        """A due step stays due unless the per-example budget thins (Budget.stride > 1): then one in each block of
        `stride` due steps, at a random place in it, so a pattern in the data with the stride's period is not
        aliased. Never with several ranks (their budgets' MAX_STRIDE is 1)."""
        stride = self.measuring_one_in
        if stride == 1 or (self._per_example_auto and (self._micro_batches or 1) != 1):
            self._thin_left = 0  # no per-example work on these steps (or none too costly): every one is measured
            return True
        if self._thin_left <= 0 or stride != self._thin_stride:  # a new block (or a new stride)
            self._thin_left = self._thin_stride = stride
            self._thin_pick = self._thin_random.randrange(stride)
        self._thin_left -= 1
        return self._thin_left == self._thin_pick

    def _choose_per_example(self, measuring: bool) -> None:
        """Arms the per-example hooks for this step or not (never on unmeasured steps).

        Under auto, only when the step is expected to be one micro-batch: the last measured
        step's count (or the accumulation helper's) is 1, or nothing is known yet.
        """
        per_example = self._per_example
        if per_example is None:
            return
        wanted = measuring and (not self._per_example_auto or (self._micro_batches or 1) == 1)
        if wanted and not per_example.armed:
            per_example.arm()
        elif not wanted and per_example.armed:
            per_example.disarm()
        per_example.begin_step(wanted)

    def skip_step(self, reason: str) -> None:
        """A step the optimizer did not take (AMP's GradScaler found inf/NaN): counted, and sent as skipped."""
        try:
            step = self._first_step + self.steps_seen
            self.steps_seen += 1
            buffer = self._buffer
            if self._measuring and buffer is not None:
                self._close(step, buffer, reason)
            elif self._unwanted and self._count_dropped is not None:
                self._count_dropped(1)
            self._begin_step()
        except Exception as error:
            self._guard.trip("the skipped-step hook", error)

    def _close(self, step: int, buffer: _StepBuffer, forced_skip: str = "") -> None:
        unix_ms = time.time() * 1000.0
        fsdp_why = self._take_fsdp(buffer, step) if self._fsdp is not None else ""
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
        if k == 1 and self._world_size == 1 and self._per_example is None:
            self._warn_once(
                "one-scale",
                logging.WARNING,
                "noisescope: each optimizer step here is one micro-batch on one process and the per-example "
                "source is off (see the source line logged at watch()), so there is no second batch size to "
                "compare and no noise-scale estimate (the sidecar reports 'no estimate' too). Gradient "
                "accumulation (several backward() calls per optimizer.step()) or DDP gives one.%s",
                self._one_scale_hint,
            )
        expected, self._micro_batches = self._micro_batches, k
        self.steps_measured += 1
        values: torch.Tensor | list[float] = []
        ready = None
        per_example = None
        skip_reason = fsdp_why
        accumulated = buffer.accumulated
        reduced = buffer.reduced
        if self._ddp is not None:
            # The communication hook's figures: the bucket's input is this rank's accumulated gradient
            # (the backward-end .grad may already be all-reduced: gradient_as_bucket_view).
            local, reduced, why = self._ddp.take()
            if why:
                skip_reason = why
                self._warn_once("ddp-" + why[:24], logging.INFO, "noisescope: step %d is sent as skipped: %s", step, why)
            else:
                accumulated = local
                if k == 1:
                    buffer.sq_norms[0] = list(local)  # one micro-batch: h_1 is the accumulated gradient
        if self._reduced_at_step == "skip":
            skip_reason = "DDP with the user's communication hook and gradient_as_bucket_view=True: no rank-local norm"
        skip_reason = forced_skip or skip_reason
        scale = self._loss_scale() if self._loss_scale is not None and not skip_reason else None
        if skip_reason:
            pass
        elif self._ddp is None and (buffer.accumulated_at != k - 1 or accumulated is None):
            # Fewer backward passes than the last measured step: .grad may have been clipped
            # since the last one, so its accumulated norm is not known.
            skip_reason = (
                f"{k} micro-batches where the previous measured step had {expected}: the accumulated "
                "norm is only taken at the backward expected to be the last"
            )
            self._warn_once(
                "shorter-step",
                logging.INFO,
                "noisescope: step %d had %d micro-batches where the previous measured step had %s; it is "
                "sent as skipped (its accumulated norm was not taken). Steps with the usual number of "
                "micro-batches are measured in full.",
                step,
                k,
                expected,
            )
        else:
            entries = [*(t for row in buffer.sq_norms for t in row), *accumulated]
            per_example = (
                self._per_example.take(buffer.sq_norms, self._names)
                if self._per_example is not None and self._per_example.measuring
                and not (self._per_example_auto and k > 1)
                else None
            )
            if per_example is not None:
                entries.extend(t for row in per_example for t in row)
            if reduced is not None:
                entries.extend(reduced)
            if scale is not None:
                entries.append(scale)
            if all(t is None or type(t) is float for t in entries):
                values = [0.0 if t is None else t for t in entries]
            else:
                values, ready = _to_host(self._stack(entries))
        dense = self._dense.close(k, bool(skip_reason)) if self._dense is not None else None
        if dense is False:
            return  # dense: every buffer is held by steps not yet sent; dropped and counted
        self._submit(
            PendingStep(
                step=step,
                micro_batches=k,
                micro_examples=self._examples(buffer, k, step),
                values=values,
                ready=ready,
                lr=_learning_rate(self._optimizer),
                unix_ms=unix_ms,
                skip_reason=skip_reason,
                per_example=per_example is not None,
                per_example_sampled=per_example is not None and self._per_example.last_sampled,  # type: ignore[union-attr]
                dense=dense,
                reduced=reduced is not None and not skip_reason,
                reduced_is_shard=self._fsdp is not None,
                loss_scaled=scale is not None and not skip_reason,
                reduced_scaled=self._ddp is not None,
            )
        )

    def _take_fsdp(self, buffer: _StepBuffer, step: int) -> str:
        """FSDP's figures into the step buffer (its rows, accumulated and reduced norms); why the step is skipped, or ''."""
        micro, local, reduced, why = self._fsdp.take()  # type: ignore[union-attr]
        if why:
            self._warn_once("fsdp-" + why[:24], logging.INFO, "noisescope: step %d is sent as skipped: %s", step, why)
            buffer.sq_norms = [[None] * len(self._params)] * max(len(buffer.examples), 1)
            return why
        buffer.sq_norms, buffer.accumulated, buffer.accumulated_at, buffer.reduced = micro, local, len(micro) - 1, reduced
        return ""

    def _stack(self, entries: list[Norm | None]) -> torch.Tensor:
        """Accelerator norms (0-dim tensors, no sync so far) as one float64 tensor on the first one's device."""
        device = next(t for t in entries if isinstance(t, torch.Tensor)).device
        zero = self._zeros.get(device)
        if zero is None:
            zero = self._zeros[device] = torch.zeros((), dtype=torch.float64, device=device)
        terms = [
            zero if t is None else t if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=torch.float64, device=device)
            for t in entries
        ]
        try:
            stacked = torch.stack(terms)
        except RuntimeError:  # layers on several devices: gather on the first one
            stacked = torch.stack([t.to(device) for t in terms])
        return stacked.to(torch.float64)

    def _examples(self, buffer: _StepBuffer, k: int, step: int) -> list[int] | None:
        """Examples per micro-batch: the j-th grad-enabled forward pairs with the j-th backward."""
        seen = buffer.examples
        if len(seen) == k:
            return seen
        if not seen:
            self._warn_once(
                "no-examples",
                logging.WARNING,
                "noisescope: the watched model's forward received no tensor argument (or ran inside torch.compile'd "
                "code, where its hook cannot run: watch the compiled wrapper, `model = torch.compile(model)`), so "
                "the examples per micro-batch are unknown; steps are sent as skipped.",
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


def _reserve_hook_id() -> int:
    """An id no RemovableHandle will take: a key of ours in a parameter's _backward_hooks beside any user's."""
    global _own_ids
    if isinstance(getattr(RemovableHandle, "next_id", None), int):
        key = RemovableHandle.next_id
        RemovableHandle.next_id += 1
        return key
    _own_ids += 1  # a torch without the shared counter: ids far above any handle's
    return _own_ids


_own_ids = 1 << 62


def _inert_hook(*args: Any, **kwargs: Any) -> None:
    return None


def _inert() -> Callable[..., None]:
    return _inert_hook


class _Hook(functools.partial):  # type: ignore[type-arg]
    """Our module/optimizer hook; copies (copy.deepcopy, pickling, torch.save) get a no-op instead.

    A bound method would drag the Meter (threads, locks) into every deepcopy of the model,
    e.g. an EMA copy, and fail there. A partial, so that calling it adds no Python frame: the
    optimizer's step hook runs at every step, measured or not.
    """

    __slots__ = ()

    def __new__(cls, fn: Callable[..., None]) -> _Hook:
        return super().__new__(cls, fn)

    def __reduce__(self) -> tuple[Callable[[], Callable[..., None]], tuple[()]]:  # type: ignore[override]
        return (_inert, ())

    def __deepcopy__(self, memo: dict[int, Any]) -> Callable[..., None]:
        return _inert_hook


class _ModuleHook(_Hook):
    """A module hook that does nothing while torch.compile traces it: never a graph break (an error under
    fullgraph=True) in the user's compiled model. Such a module's examples and per-example norms are unknown."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        if _compiling():
            return None
        return self.func(*args, **kwargs)


_compiling: Callable[[], bool] = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


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
