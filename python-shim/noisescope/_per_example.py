"""The per-example source: module hooks that give, per micro-batch and layer, Σ_e |contribution_e|².

On measured steps (under source="auto", only those the meter expects to be one micro-batch: with
accumulation the micro-batches are the cheaper second scale) a forward hook on each covered module
keeps a reference to its input (which autograd keeps anyway) and hooks its output tensor; when δ
(the gradient at that output) arrives in the backward, `_per_example_math` turns (input, δ) into
the layer's sum, and the references go. Nothing per example of parameter size is kept (see the math module for when a
sequence-shaped layer materialises per-example gradients, chunk by chunk, because that is cheaper). A Linear on [B, d]
rows keeps only |x_e| and |δ_e| from its δ hook: every such layer's sums come from one batched op at the step's end
(each small op costs ~10 µs amid a step, so the op count is the cost: bench_per_example_profile.py).

Rows pair with micro-batches the way the meter pairs forwards with backwards: the j-th
grad-enabled forward of the model is micro-batch j. A row is void (its step is sent without
per-example sums) when a covered module's input does not have the model's batch as dim 0.

Sampled (watch(per_example_sample=s)): when a row's first δ arrives, it draws s of its B examples by importance
(`Sampler`), the same for every later layer; those calls' (input, δ, stats) rows are selected before any term is
computed (cost ∝ s), δ's row k times √w_k, so every term gives Σ_k w_k |g_{i_k}|², an unbiased estimate of the
row's exact sum (the terms are quadratic in δ). The first layer is sampled too (its δ is still held): an LM's
vocabulary head, often the costliest layer, is the first.
"""
from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from . import _per_example_math as pem
from . import _per_example_more as pmore
from ._guard import Guard
from ._per_example_budget import Budget
from ._meter import _reserve_hook_id

logger = logging.getLogger("noisescope")

_graph_task_id: Callable[[], int] | None = getattr(torch._C, "_current_graph_task_id", None)

# Modules whose per-example terms we compute, by the forward they must have (a subclass that
# overrides forward computes something else).
_COVERED: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, nn.LayerNorm, nn.RMSNorm, *pmore.CONVOLUTIONS, *pmore.NORMALISATIONS,
)
# Modules that use their children's parameters without calling the children (F.multi_head_attention_forward):
# covered as one unit where `pmore.attention_reason` allows.
_FUNCTIONAL_PARENTS: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)
# Training-mode batch statistics mix examples: "per-example" contributions are then not independent.
_COUPLING: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm,)


def _covered_base(module: nn.Module) -> type[nn.Module] | None:
    for base in _COVERED:
        if isinstance(module, base) and type(module).forward is base.forward:
            return base
    return None


@dataclass
class Coverage:
    """Which parameters the per-example source covers, and why the others are not."""

    # module → (weight index, bias index) in `params`; a pmore.ParamPair key holds two more of a module's parameters
    modules: dict[Any, tuple[int | None, int | None]]
    covered: list[int]  # indices into the watched parameter list
    uncovered: dict[int, str]  # index → why
    coupling: list[str]  # names of modules that mix examples (BatchNorm)


def coverage(model: nn.Module, params: Sequence[nn.Parameter]) -> Coverage:
    """Decides coverage from the module tree alone (no forward run)."""
    index = {id(p): i for i, p in enumerate(params)}
    owners: dict[int, list[nn.Module]] = {}
    inside_functional: dict[int, nn.Module] = {}  # id(module) → the functional parent using its parameters
    coupling: list[str] = []
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(module)
        if isinstance(module, _FUNCTIONAL_PARENTS):
            inside_functional.update((id(m), module) for m in module.modules())
        if isinstance(module, _COUPLING):
            coupling.append(name or "<root>")
    modules: dict[Any, tuple[int | None, int | None]] = {}
    uncovered: dict[int, str] = {}
    pairs: dict[tuple[int, tuple[str, str]], pmore.ParamPair] = {}  # per attention module, its ParamPair keys
    for p in params:
        i = index[id(p)]
        mods = owners.get(id(p), [])
        module = mods[0] if mods else None
        why = ""
        if not mods:
            why = "owned by no module"
        elif id(module) in inside_functional:
            parent = inside_functional[id(module)]
            why = pmore.attention_reason(parent) or ("shared by several modules" if len(mods) > 1 else "")
            slot = None if why else pmore.attention_slot(parent, p, pairs)
            if slot is not None:
                key, position = slot
                pair = list(modules.get(key, (None, None)))
                pair[position] = i
                modules[key] = (pair[0], pair[1])
                modules.setdefault(parent, (None, None))  # hooked; its terms come from the unit
                continue
            why = why or f"used functionally by its parent ({type(module).__name__} in {type(parent).__name__})"
        else:
            why = next(filter(None, map(_module_reason, mods)), "")
            if not why and len(mods) > 1:
                why = pmore.tied_reason(mods, p)
        if why:
            uncovered[i] = why
            continue
        for module in mods:
            weight, bias = modules.get(module, (None, None))
            if p is getattr(module, "weight", None):
                weight = i
            elif p is getattr(module, "bias", None):
                bias = i
            else:  # a parameter the formula does not know
                uncovered[i] = f"{type(module).__name__} parameter that is neither weight nor bias"
                break
            modules[module] = (weight, bias)
    covered = [i for i in range(len(params)) if i not in uncovered]
    return Coverage(modules=modules, covered=covered, uncovered=uncovered, coupling=coupling)


def _module_reason(module: nn.Module) -> str:
    """Why this module's own parameters are not covered ("" when they are)."""
    if _covered_base(module) is None:
        return type(module).__name__
    if isinstance(module, nn.Embedding) and module.scale_grad_by_freq:
        return "Embedding(scale_grad_by_freq=True) couples examples"
    return ""


@dataclass
class _Call:
    """One covered module's forward call: its input until δ arrives."""

    module: nn.Module
    row: _Row
    x: Tensor | None
    delta: Tensor | None = None
    stats: tuple[Tensor, Tensor] | None = None  # a LayerNorm's saved (mean, rstd)


@dataclass
class _Row:
    """One micro-batch (grad-enabled model forward): per-layer sums and calls waiting for δ."""

    examples: int | None
    sums: list[Any]
    calls: dict[nn.Module, list[_Call]] = field(default_factory=dict)
    void: str = ""  # why this row's sums cannot be used
    batch: int | None = None  # sampled: B (dim 0 of the first covered input)
    sample: Draw | None = None  # sampled: drawn at the first δ; None: every example
    drawn: bool = False  # sampled: the first δ came (and `sample` was drawn from it)
    drawing: threading.Event | None = None  # sampled, worker: set once `sample` is drawn (the worker draws it)
    # Row Linears' (weight index, bias index, |x_e|, |δ_e|): their terms in one batched op at the step's end.
    linear: list[tuple[int | None, int | None, Tensor, Tensor]] = field(default_factory=list)


@dataclass(frozen=True)
class Draw:
    """One row's importance sample: example indices (with repetition) and √w per drawn example, on δ's device."""

    index: Tensor
    root_weight: Tensor  # √(1/(s·p_i)): δ's rows times it make every term w-weighted
    proposal: Tensor  # p over the B examples


class Sampler:
    """Draws each micro-batch's sample: s examples i.i.d. with probability p_i (every example when s ≥ B).

    p_i = (1 − α)·q_i/Σq + α/B, q_i = Σ δ_i² at the first layer's output (× (|x_i|² + 1) for a Linear on [B, d]
    rows: then q_i is that layer's per-example norm). Each drawn example weighs 1/(s·p_i), so Σ_k w_k |g_{i_k}|²
    is unbiased for Σ_i |g_i|² whatever q is; q ∝ the norms (a classifier's head δ = softmax − onehot tracks them)
    makes its variance small, and the α/B share bounds it when q is a poor proxy (and covers q = 0).
    Its own generators (one per device, so no copy to the host in the backward), never torch's or Python's global
    one (training's random stream stays untouched), seeded with SEED so that a run's samples are reproducible.
    """

    SEED = 0x5A3D
    # α: the mixture costs a noise floor ~√(α/s) (s = 16: 5.1% of tr(Σ) at 0.02, 6.5% at 0.05, 8.5% at 0.1, 12.0% at 0.2;
    # bench_per_example_sampled_accuracy.py); a little keeps w ≤ B/(α·s) where q misses an example's gradient.
    MIXTURE = 0.05

    def __init__(self, size: int | float) -> None:
        self.size = size  # an int s ≥ 1, or a float in (0, 1]: that fraction of B (at least one example)
        self._generators: dict[torch.device, torch.Generator] = {}
        self.last: Draw | None = None  # the latest draw (tests)

    def count(self, batch: int) -> int:
        return self.size if isinstance(self.size, int) else max(1, round(self.size * batch))

    @classmethod
    def proposal(cls, delta: Tensor, batch_dim: int = 0, rows: Tensor | None = None) -> Tensor:
        """p over the B examples (float32, δ's device) from δ at the first layer (and its [B, d] input `rows`)."""
        d = delta.detach().movedim(batch_dim, 0)
        # One pass, no temporary of δ's size (an LM head's δ is B·T·vocab: 525 → 150 µs on the bench block).
        upcast = torch.float32 if d.dtype in (torch.float16, torch.bfloat16) else None  # never narrows float64
        q = torch.linalg.vector_norm(d.reshape(d.shape[0], -1), dim=1, dtype=upcast).float().square()
        if rows is not None:
            q = q * (rows.detach().float().square().sum(1) + 1.0)
        batch, total = q.shape[0], q.sum()
        usable = torch.isfinite(total) & (total > 0)  # no host sync: a tensor condition
        share = torch.where(usable, q / total, torch.full_like(q, 1.0 / batch))
        return (1.0 - cls.MIXTURE) * share + cls.MIXTURE / batch

    def draw(self, delta: Tensor, batch_dim: int = 0, rows: Tensor | None = None) -> Draw | None:
        """s examples from the proposal, or None (s ≥ B: the exact path)."""
        batch = delta.shape[batch_dim]
        chosen = self.count(batch)
        if chosen >= batch:
            return None
        p = self.proposal(delta, batch_dim, rows)
        generator = self._generators.get(p.device)
        if generator is None:
            generator = self._generators[p.device] = torch.Generator(device=p.device).manual_seed(self.SEED)
        index = torch.multinomial(p, chosen, replacement=True, generator=generator)
        self.last = Draw(index=index, root_weight=(chosen * p[index]).rsqrt(), proposal=p)
        return self.last

    def describe(self) -> str:
        return f"s = {self.size}" if isinstance(self.size, int) else f"{self.size:.0%} (s = {self.size:g}·B)"


class PerExample:
    """Arms per-module hooks on measured steps; hands the meter one row of sums per micro-batch."""

    def __init__(
        self,
        modules: dict[Any, tuple[int | None, int | None]],
        n_layers: int,
        guard: Guard,
        hook: Callable,
        sample: int | float | str | None = None,
    ) -> None:
        self._modules = modules
        # "auto": exact until the terms cost more than the budget allows, then the budget's s (set between steps).
        self.budget = Budget() if sample == "auto" else None
        self._auto_sampler = Sampler(Budget.MIN_SAMPLE) if self.budget is not None else None
        self.sampler = Sampler(sample) if sample is not None and sample != "auto" else None  # None: every example
        self.last_sampled = False  # the latest take()'s sums were sampled estimates
        self._costs: list[float] = []  # budget: this step's sampleable terms' thread CPU seconds (any thread)
        self._worker_costs: list[float] = []  # those of them spent on the worker thread (beside the backward)
        self._step_started = 0.0
        self._units = pmore.units(modules)  # modules whose terms are computed jointly (attention, tied weights)
        self._n_layers = n_layers
        self._guard = guard
        self._forward_hook = hook(self._on_forward)  # the meter's deepcopy-safe wrapper
        # Our key per module in its forward-hook dicts, unique as a handle's id: arming puts the hook in directly.
        self._keys = [(m, _reserve_hook_id()) for m in modules if not isinstance(m, pmore.ParamPair)]
        self._delta_key = _reserve_hook_id()  # ours in an output tensor's _backward_hooks
        self._armed = False
        self._lock = threading.Lock()
        self._rows: list[_Row] = []
        self._measuring = False
        self._flush_queued: set[int] = set()
        self._deferred: list[tuple[_Row, Any, list[_Call]]] = []  # sampled terms computed inline: at the step's end
        self._draws: list[tuple[_Row, Any, Any, Tensor]] = []  # sampled, worker: (row, module, x, first δ) to draw from
        self._draw_lock = threading.Lock()  # draws one at a time, in the rows' order (the sampler's stream is seeded)
        self._warned: set[str] = set()
        self._ones: dict[tuple[Any, ...], Tensor] = {}  # row Linears' [B] ones, by (B, dtypes, device)
        self.sequence_form = "auto"  # tests force "gram" or "materialise"
        # CPU layers' terms on a worker thread while the backward goes on, where torch leaves a core free.
        self.overlap = _Overlap()
        guard.on_trip(self._switch_off)
        if self.sampler is not None:
            logger.info(
                "noisescope: per-example sums from %s of each micro-batch's B examples, drawn by importance at the "
                "first layer's δ and reweighted (unbiased; Linear layers on [B, d] rows stay exact, it costs less; seed %d)",
                self.sampler.describe(),
                Sampler.SEED,
            )

    # ------------------------------------------------------------ meter-facing

    def arm(self) -> None:
        """Our forward hook into each covered module's `_forward_hooks` under a key of ours: what
        register_forward_hook(with_kwargs=True) does, less a RemovableHandle per module: arm + disarm in situ (every=2)
        39 → 15 µs a measured step on the 512 MLP, 64 → 22 µs on the benchmark block. A user's hooks registered
        before or meanwhile stay in the same dicts, in the order registered, and keep their own handles."""
        self._armed = True
        try:
            for module, key in self._keys:
                module._forward_hooks[key] = self._forward_hook
                module._forward_hooks_with_kwargs[key] = True
        except Exception:
            self.disarm()
            raise

    def disarm(self) -> None:
        self._armed = False
        for module, key in self._keys:
            module._forward_hooks.pop(key, None)
            module._forward_hooks_with_kwargs.pop(key, None)

    @property
    def armed(self) -> bool:
        """True while the module forward hooks are in."""
        return self._armed

    @property
    def measuring(self) -> bool:
        """True while this step's per-example sums are being taken."""
        return self._measuring

    def begin_step(self, measuring: bool) -> None:
        """Starts a step (or stops the current one's work, with False): rows so far are dropped."""
        with self._lock:
            self._rows = []
            self._flush_queued.clear()
            self._deferred = []
        self._measuring = measuring
        if measuring and self.budget is not None:
            self._costs = []
            self._worker_costs = []
            self._step_started = time.perf_counter()

    def begin_forward(self, examples: int | None) -> None:
        if not self._measuring:
            return
        with self._lock:
            self._rows.append(_Row(examples=examples, sums=[None] * self._n_layers))

    def restart(self, dropped: int) -> None:
        """The meter discarded the step's first `dropped` micro-batches."""
        with self._lock:
            self._rows = self._rows[dropped:]

    def take(self, micro_sq_norms: Sequence[Sequence[Any]], names: Sequence[str]) -> list[list[Any]] | None:
        """At the step's end: one row of sums per micro-batch, or None (logged once per reason)."""
        with self._lock:
            rows, self._rows = self._rows, []
        for row in rows:
            self._flush(row)
        self._compute_deferred(rows)
        self.overlap.wait()  # the step's terms still being computed (on the worker)
        self.last_sampled = any(row.sample is not None for row in rows)
        if self.budget is not None:
            try:
                self._spend(self.budget, rows)
            except Exception as error:
                self._guard.trip("the per-example budget", error)
        k = len(micro_sq_norms)
        if len(rows) > k:  # forwards no backward went through (an evaluation with gradients enabled)
            rows = [row for row in rows if any(s is not None for s in row.sums)]
        if len(rows) != k:
            # The meter warns about the pairing; this only says what it costs here.
            self._warn_once(
                "pairing",
                "noisescope: a step's grad-enabled forward passes and backward passes did not pair up, so it "
                "carries no per-example sums",
                level=logging.INFO,
            )
            return None
        for row in rows:
            if row.void:
                self._warn_once("void:" + row.void, "noisescope: per-example sums left out of a step: %s", row.void)
                return None
        for j, row in enumerate(rows):
            for i, norm in enumerate(micro_sq_norms[j]):
                if norm is not None and row.sums[i] is None:
                    # A gradient its module's forward did not produce: the parameter is used elsewhere.
                    self._warn_once(
                        "missing:" + names[i],
                        "noisescope: parameter %s got a gradient that did not come through its module's forward "
                        "(used outside it?), so its per-example sum is unknown; steps carry no per-example sums.",
                        names[i],
                    )
                    return None
        return _host_floats([row.sums for row in rows])

    # ------------------------------------------------------------ hooks

    def _spend(self, budget: Budget, rows: list[_Row]) -> None:
        """The budget sees the step's cost; a new sample size or stride takes effect from the next step (none is running)."""
        cost, self._costs = sum(self._costs), []
        inline = cost - sum(self._worker_costs)
        self._worker_costs = []
        step = time.perf_counter() - self._step_started
        batch = max((row.examples or row.batch or 0 for row in rows), default=0)
        stride = budget.stride
        if not budget.observe(cost, step, batch, inline_s=inline):
            return
        size = budget.size
        if budget.stride != stride:
            then = (
                f"from now on 1 in {budget.stride} of the steps due is measured, chosen at random (each block of "
                f"{budget.stride}); per_example_sample=None or an int keeps every step"
                if budget.stride > 1
                else "every step due is measured again"
            )
            logger.info(
                "noisescope: per-example sums at s = %s still cost %.2f ms of a %.2f ms step on the training thread "
                "(budget %.0f%%): %s",
                size or "every example", inline * 1e3, step * 1e3, Budget.FRACTION * 100, then,
            )
        elif size is None:
            self.sampler = None
            logger.info(
                "noisescope: per-example sums exact again (sampled they cost %.2f ms a step%s)",
                cost * 1e3,
                ", not a quarter less than exact: sampling is not worth its noise here" if budget.futile else "",
            )
        else:
            self._auto_sampler.size = size  # type: ignore[union-attr]
            self.sampler = self._auto_sampler
            logger.info(
                "noisescope: per-example sums cost %.2f ms of a %.2f ms step (budget %.0f%%): from now on from %d of "
                "each micro-batch's examples, drawn by importance and reweighted (unbiased; per_example_sample=None "
                "keeps them exact)",
                cost * 1e3,
                step * 1e3,
                Budget.FRACTION * 100,
                size,
            )

    def _switch_off(self) -> None:
        self._measuring = False

    def _on_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if not self._measuring or not torch.is_grad_enabled():
            return None
        try:
            saved: Any = None
            if isinstance(module, nn.MultiheadAttention):  # query, key, value and masks; δ arrives at output[0]
                x, saved, output = pmore.attention_call(module, args, kwargs, output)
            else:
                x = args[0] if args else kwargs.get("input")
            if not isinstance(output, Tensor) or not output.requires_grad:
                return None
            if _graph_task_id is not None and _graph_task_id() != -1:
                return None  # a recomputation inside a backward (activation checkpointing): already counted
            if _computing.on:
                return None  # our own terms calling a module (attention's vjp), on the worker or at the step
            stats = None
            if isinstance(module, nn.LayerNorm) and isinstance(x, Tensor):
                stats = pem.layer_norm_stats(output, x, module)
            with self._lock:
                if not self._rows:  # a module called outside the model's forward
                    self._rows.append(_Row(examples=None, sums=[None] * self._n_layers))
                row = self._rows[-1]
                examples = row.examples if row.examples is not None else row.batch
                if not isinstance(x, Tensor) or x.dim() < 2 or (examples is not None and x.shape[0] != examples):
                    shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                    row.void = (
                        f"{type(module).__name__} input {shape} does not have the model's batch "
                        f"({examples}) as dim 0 (the per-example source needs batch-first inputs)"
                    )
                    return None
                if self.sampler is not None and row.batch is None:
                    row.batch = x.shape[0]
                call = _Call(module=module, row=row, x=x.detach() if saved is None else saved, stats=stats)
                row.calls.setdefault(self._units.get(module, module), []).append(call)
            on_delta = functools.partial(self._on_delta, call)
            if saved is not None:
                saved.register(output, on_delta)  # the attention output, and its weights where the loss uses them
            elif type(output) is Tensor and output.grad_fn is not None:
                _hook_output(output, output.grad_fn, self._delta_key, on_delta)
            else:
                output.register_hook(on_delta)
        except Exception as error:
            self._guard.trip("the per-example forward hook", error)
        return None

    def _on_delta(self, call: _Call, delta: Tensor) -> None:
        if not self._measuring:
            return None
        try:
            row = call.row
            with self._lock:
                if call.delta is not None or call.x is None:
                    row.void = "a layer's output got two gradients (two backward passes through one forward)"
                    return None
                call.delta = delta
                unit = self._units.get(call.module, call.module)
                if self.sampler is not None and not row.drawn:
                    row.drawn = True
                    # The forward is over: row.calls holds every call. Only row Linears (exact anyway): no draw.
                    if not all(_row_linear(u, cs) for u, cs in row.calls.items()):
                        self._start_draw(row, call, delta)
                calls = row.calls.get(unit, [])
                complete = all(c.delta is not None for c in calls)
                if complete:
                    row.calls.pop(unit, None)
                elif _graph_task_id is not None:
                    task = _graph_task_id()
                    if task not in self._flush_queued:  # some calls' δ may never come: settle at the end
                        self._flush_queued.add(task)
                        torch.autograd.Variable._execution_engine.queue_callback(functools.partial(self._flush, row))
            if complete:
                self._dispatch(row, unit, calls)
        except Exception as error:
            self._guard.trip("the per-example gradient hook", error)
        return None

    def _start_draw(self, row: _Row, call: _Call, delta: Tensor) -> None:
        """The row's sample: drawn now, or where the layers' terms go to the worker, by the worker (first in its queue):
        the draw reads the whole first δ (an LM head's: ~0.2–0.5 ms), which the backward need not wait for. The caller
        holds the lock."""
        if delta.is_cpu and self.overlap.worthwhile():
            row.drawing = threading.Event()
            self._draws.append((row, call.module, call.x, delta))  # x and δ as they are now (a row Linear lets x go)
            self.overlap.submit(self._draw_queued)
        else:
            row.sample = self._draw(call.module, call.x, delta)

    def _draw_queued(self) -> None:
        """Every draw queued so far, in order (whichever thread takes this job first)."""
        with self._draw_lock:
            while True:
                with self._lock:
                    if not self._draws:
                        return
                    row, module, x, delta = self._draws.pop(0)
                try:
                    row.sample = self._draw(module, x, delta)
                except Exception as error:
                    self._guard.trip("the per-example draw", error)
                finally:
                    row.drawing.set()  # type: ignore[union-attr]

    def _sample(self, row: _Row) -> Draw | None:
        """The row's sample, once drawn (a worker's draw may still be running)."""
        if row.drawing is not None and not row.drawing.wait(timeout=_DRAW_WAIT_S):
            # Never expected (the draw is queued before the row's terms): a lost draw switches off, it never hangs.
            self._guard.trip("the per-example terms", RuntimeError(f"the sample was not drawn within {_DRAW_WAIT_S} s"))
        return row.sample

    def _draw(self, module: Any, x: Any, delta: Tensor) -> Draw | None:
        """The row's sample, from its first δ and that layer's input."""
        batch_dim = x.batch_dim if isinstance(x, pmore.AttentionInputs) else 0
        rows = x if isinstance(module, nn.Linear) and isinstance(x, Tensor) and x.dim() == 2 else None
        started = time.thread_time() if self.budget is not None else 0.0
        drawn = self.sampler.draw(delta, batch_dim, rows)  # type: ignore[union-attr]
        if self.budget is not None:
            self._charge(time.thread_time() - started)
        if drawn is not None and self.budget is None:  # "auto" logs each size it picks, with why
            self._warn_once(
                "sampled", "noisescope: per-example source sampled: %d of %d examples per micro-batch",
                len(drawn.index), delta.shape[batch_dim], level=logging.INFO,
            )
        return drawn

    def _flush(self, row: _Row) -> None:
        """End of a backward (or of the step): calls whose δ never came contribute nothing."""
        try:
            with self._lock:
                pending, row.calls = row.calls, {}
            if not self._measuring:
                return  # the step's per-example work was stopped: let the inputs go uncomputed
            for module, calls in pending.items():
                arrived = [c for c in calls if c.delta is not None]
                if arrived:
                    self._dispatch(row, module, arrived)
        except Exception as error:
            self._guard.trip("the per-example backward-end callback", error)

    def _dispatch(self, row: _Row, module: Any, calls: list[_Call]) -> None:
        """Computes now, or on the worker for CPU tensors when a core is free (take() waits for it)."""
        delta = calls[0].delta
        if _row_linear(module, calls):
            # Exact, and cheaper than a hand-off or a selection: two row norms now (|x_e| here costs less than in the
            # forward, bench_per_example_profile.py --against), the products with every row Linear's at the step's end.
            call = calls[0]
            if delta.requires_grad:  # type: ignore[union-attr]  # backward(create_graph=True): no graph of our own
                delta = delta.detach()  # type: ignore[union-attr]
            weight, bias = self._modules[module]
            row.linear.append((weight, bias, pem.row_norms(call.x), pem.row_norms(delta)))  # type: ignore[arg-type]
            call.x = call.delta = None  # done: a second δ finds x gone (two backwards)
        elif delta is not None and delta.is_cpu and self.overlap.worthwhile():
            self.overlap.submit(functools.partial(self._compute_guarded, row, module, calls))
        elif self._sample(row) is not None:
            # Inline and sampled: the drawn rows are selected now (the layer's full input and δ go) and their terms
            # computed at the step's end, one layer after another: amid the backward each ran cold (~90 µs more per
            # conv layer of the benchmark CNN at s = 1, bench_per_example_profile.py --split).
            selected = _sampled(calls, row.sample)
            with self._lock:
                self._deferred.append((row, module, selected))
        else:
            self._compute(row, module, calls)

    def _compute_deferred(self, rows: list[_Row]) -> None:
        """The step-end terms: every micro-batch's row Linears in one batched op, then sampled layers' drawn rows."""
        with self._lock:
            deferred, self._deferred = self._deferred, []
        if not self._measuring:
            return  # switched off (or the step's work stopped): let the selected rows go uncomputed
        try:
            _row_linear_sums(rows, self._ones)
        except Exception as error:
            self._guard.trip("the per-example step-end terms", error)
        for row, module, selected in deferred:
            if any(row is kept for kept in rows):  # not a row restart() dropped
                try:  # a stand-in row without the sample (already selected) that adds into the row's own sums
                    self._compute(_Row(examples=row.examples, sums=row.sums), module, selected)
                except Exception as error:
                    self._guard.trip("the per-example step-end terms", error)

    def _compute_guarded(self, row: _Row, module: Any, calls: list[_Call]) -> None:
        try:
            self._compute(row, module, calls)
        except Exception as error:
            self._guard.trip("the per-example worker", error)

    def _compute(self, row: _Row, module: Any, calls: list[_Call]) -> None:
        _computing.on = True
        started = time.thread_time() if self.budget is not None else 0.0
        try:
            self._compute_terms(row, module, calls)
        finally:
            _computing.on = False
            if self.budget is not None:
                self._charge(time.thread_time() - started)

    def _charge(self, seconds: float) -> None:
        self._costs.append(seconds)  # list.append: atomic, from the worker too
        if _computing.worker:
            self._worker_costs.append(seconds)

    def _compute_terms(self, row: _Row, module: Any, calls: list[_Call]) -> None:
        sample = self._sample(row)
        if sample is not None:  # row Linears never come here (_dispatch): they stay exact
            calls = _sampled(calls, sample)
        if isinstance(module, pmore.Unit):
            with torch.no_grad():
                terms = module.terms(calls, self.sequence_form)
            for c in calls:
                c.x = None
            with self._lock:
                for index, term in terms:
                    earlier = row.sums[index]
                    row.sums[index] = term if earlier is None else earlier + term
            return
        pairs = [(c.x, c.delta) for c in calls]
        stats = [c.stats for c in calls]
        for c in calls:
            c.x = c.stats = None  # let the activations go
        weight_index, bias_index = self._modules[module]
        with torch.no_grad():
            if stats[0] is not None:
                weight, bias = pem.normalisation(module, pairs, stats)  # type: ignore[arg-type]
            else:
                weight, bias = _terms(module, pairs, self.sequence_form)  # type: ignore[arg-type]
        with self._lock:
            for index, term in ((weight_index, weight), (bias_index, bias)):
                if index is not None and term is not None:
                    earlier = row.sums[index]
                    row.sums[index] = term if earlier is None else earlier + term

    def _warn_once(self, key: str, message: str, *args: Any, level: int = logging.WARNING) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.log(level, message, *args)


class _Computing(threading.local):
    on = False  # this thread is inside _compute (a class default: no getattr fallback per forward hook call)
    worker = False  # this thread is the _Overlap worker: its terms' CPU overlaps the backward (the budget's stride)


_computing = _Computing()


def _hook_output(output: Tensor, grad_fn: Any, key: int, hook: Callable[[Tensor], None]) -> None:
    """output.register_hook(hook) less its RemovableHandle and import (~3 of its ~6 µs): the same dict set as the
    tensor's _backward_hooks, the same registration with its grad_fn. A plain Tensor with a grad_fn only."""
    hooks = output._backward_hooks
    if hooks is None:
        output._backward_hooks = OrderedDict(((key, hook),))
        grad_fn._register_hook_dict(output)
    else:  # someone's hook is there already (registered in their forward hook before ours)
        hooks[key] = hook


_DRAW_WAIT_S = 10.0


def _sampled(calls: list[_Call], draw: Draw) -> list[_Call]:
    """The calls restricted to the drawn examples (copies of those rows, δ's row k × √w_k: every term is quadratic
    in δ, so it becomes Σ_k w_k |g_{i_k}|²); the originals let their inputs go."""
    out = []
    for c in calls:
        delta = c.delta
        assert delta is not None
        at = draw.index if draw.index.device == delta.device else draw.index.to(delta.device)
        root = draw.root_weight.to(delta.device, delta.dtype)
        batch_dim = c.x.batch_dim if isinstance(c.x, pmore.AttentionInputs) else 0
        x: Any
        if isinstance(c.x, pmore.AttentionInputs):
            x = c.x.select(at)
            if x.weights_delta is not None:  # δ at the attention weights: the terms are quadratic in both δ together
                x = replace(x, weights_delta=x.weights_delta * _along(root.to(x.weights_delta.dtype), 0, x.weights_delta.dim()))
        else:
            x = c.x.index_select(0, at)  # type: ignore[union-attr]
        # In place: a second copy of δ's selected rows alive at once costs page faults (the benchmark block's head δ
        # [4, 64, 1000]: ~470 a call, 580 → 65 µs).
        delta = delta.index_select(batch_dim, at).mul_(_along(root, batch_dim, delta.dim()))
        stats = None if c.stats is None else (c.stats[0].index_select(0, at), c.stats[1].index_select(0, at))
        out.append(_Call(module=c.module, row=c.row, x=x, delta=delta, stats=stats))
        c.x = c.stats = None
    return out


def _along(values: Tensor, dim: int, ndim: int) -> Tensor:
    """values [s] shaped to broadcast along `dim` of an ndim-dimensional tensor."""
    return values.reshape([-1 if d == dim else 1 for d in range(ndim)])


def _row_linear(module: Any, calls: list[_Call]) -> bool:
    """A Linear called once on [B, d_in] rows: its terms are two row norms at δ and a share of one batched op at the
    step's end, less than handing them to the worker costs (a thread wake-up and the GIL passed back and forth)."""
    return isinstance(module, nn.Linear) and len(calls) == 1 and calls[0].x is not None and calls[0].x.dim() == 2


class _Overlap:
    """One daemon thread that runs submitted work in order; it exits after a second idle.

    Worth it only while torch's intra-op threads leave a core free (e.g. set_num_threads(1) on two
    cores): the worker's ops then run beside the backward instead of after it. Otherwise work runs inline.

    A hand-off cost the training thread ~20 µs of CPU amid the backward, ~14 of them the wake-up of the idle
    worker (the queue's put; a polling worker's put cost ~5). The rest is kept small: submit() takes no lock (the
    count of work not yet run is a list's length, its append and pop atomic under the GIL; the runner that empties
    it takes the Condition to wake wait()) and asks no pid (a forked child is reset at the fork): the δ hooks'
    _dispatch 174 → 152 µs a step on the benchmark block (8 hand-offs), 135 → 116 on the CNN (3),
    bench_per_example_profile.py --against 74b46dc --worker transformer CNN. Tried and dropped: waking the worker
    for every other item (−50 µs in the hooks, +530 µs at the step's end: the last layers' terms then ran on the
    training thread).
    """

    IDLE_S = 1.0
    _instances: weakref.WeakSet[_Overlap] = weakref.WeakSet()

    def __init__(self) -> None:
        self.enabled: bool | None = None  # None: while a core is free; True/False: always/never (tests, benchmarks)
        self._cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.submitted = 0  # a statistic (tests): counted without a lock
        self._reset()
        _Overlap._instances.add(self)

    @classmethod
    def _after_fork(cls) -> None:
        for overlap in list(cls._instances):
            overlap._reset()  # a forked child: the parent's thread, queue and count are not ours

    def _reset(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._done = threading.Condition()  # wait() sleeps on it; the worker's start and exit take it
        self._pending: list[None] = []  # one entry per work submitted and not yet run
        self._thread: threading.Thread | None = None

    def worthwhile(self) -> bool:
        if self.enabled is None:
            return torch.get_num_threads() < self._cores
        return self.enabled

    @property
    def running(self) -> bool:
        return self._thread is not None

    def submit(self, work: Callable[[], None]) -> None:
        self.submitted += 1
        self._pending.append(None)  # before the put: whoever runs it pops after
        self._queue.put(work)
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._done:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="noisescope-per-example", daemon=True)
                self._thread.start()

    def wait(self) -> None:
        """Until everything submitted so far has run; meanwhile this thread runs queued work too.

        At the step's end the queue holds the last layers' terms (a CNN's input layer's δ comes last):
        taking them here puts two cores on what the step waits for instead of one. Work that a worker
        leaving idle left queued runs here too.
        """
        if not self._pending:
            return  # nothing submitted is left to run (inline steps: every step ends here)
        while True:
            try:
                work = self._queue.get_nowait()
            except queue.Empty:
                break
            self._run_one(work)
        with self._done:
            while self._pending:
                thread = self._thread
                if not self._done.wait(timeout=1.0) and (thread is None or not thread.is_alive()):
                    self._pending.clear()  # the worker is gone (interpreter shutdown): never wait on it
                    self._thread = None

    def _run(self) -> None:
        _computing.worker = True
        while True:
            try:
                work = self._queue.get(timeout=self.IDLE_S)
            except queue.Empty:
                with self._done:
                    if self._queue.empty():  # a submit that still saw this thread: its work runs in wait()
                        self._thread = None  # a later submit starts a new thread
                        return
                continue
            self._run_one(work)

    def _run_one(self, work: Callable[[], None]) -> None:
        try:
            work()  # guards its own errors
        finally:
            if self._pending:  # wait() clears it when the worker died (interpreter shutdown)
                self._pending.pop()
            if not self._pending:  # the last popper (worker or wait()) sees it empty: wait() never misses it
                with self._done:
                    self._done.notify_all()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_Overlap._after_fork)


def _row_linear_sums(rows: list[_Row], ones: dict[tuple[Any, ...], Tensor]) -> None:
    """Every row Linear's weight and bias sums of the step's micro-batches in one batched op per (B, dtypes, device)
    group: on the CPU Python floats from one host copy, elsewhere 0-dim tensors (the meter copies them asynchronously).
    `ones`: a [B] tensor of ones per group, kept across steps."""
    groups: dict[tuple[Any, ...], list[tuple[_Row, int | None, int | None, Tensor, Tensor]]] = {}
    for row in rows:
        for weight, bias, a, d in row.linear:
            groups.setdefault((a.shape[0], a.dtype, d.dtype, a.device), []).append((row, weight, bias, a, d))
        row.linear = []
    for key, entries in groups.items():
        one = ones.get(key)
        if one is None:
            if len(ones) > 8:  # batch sizes come and go
                ones.clear()
            one = ones[key] = torch.ones(key[0], dtype=key[1], device=key[3])
        roots = pem.row_linear_roots([e[3] for e in entries], [e[4] for e in entries], one)
        values = [v * v for v in roots.tolist()] if roots.is_cpu else roots.square_().unbind()
        count = len(entries)
        for j, (row, weight, bias, _, _) in enumerate(entries):
            for index, value in ((weight, values[j]), (bias, values[count + j])):
                if index is not None:
                    earlier = row.sums[index]
                    row.sums[index] = value if earlier is None else earlier + value


def _host_floats(rows: list[list[Any]]) -> list[list[Any]]:
    """CPU sums as Python floats in one conversion (the meter then sends a plain list, no per-value tensor).

    Accelerator sums stay 0-dim tensors: the meter copies them to the host asynchronously.
    """
    terms = [t for row in rows for t in row if t is not None and type(t) is not float]
    if not terms or not all(isinstance(t, Tensor) and t.is_cpu for t in terms):
        return rows
    try:
        values = iter(torch.stack(terms).tolist())
    except RuntimeError:  # mixed dtypes
        values = iter([float(t) for t in terms])
    return [[t if t is None or type(t) is float else next(values) for t in row] for row in rows]


def _terms(module: nn.Module, calls: list[tuple[Tensor, Tensor]], form: str) -> tuple[Tensor | None, Tensor | None]:
    if isinstance(module, nn.Linear):
        return pem.linear(calls, form)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return pem.conv(module, calls, form)
    if isinstance(module, nn.Embedding):
        return pem.embedding(module, calls), None
    if isinstance(module, pmore.CONVOLUTIONS):
        return pmore.convolution(module, calls)  # type: ignore[arg-type]
    if isinstance(module, nn.GroupNorm):
        return pmore.group_norm(module, calls)
    return pem.normalisation(module, calls)  # type: ignore[arg-type]
