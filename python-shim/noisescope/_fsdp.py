"""FSDP2 (`fully_shard`): each layer's micro-batch and rank-local gradient, and this rank's shard of the reduced one.

After `fully_shard`, the model's parameters are DTensor shards that no backward touches: autograd
accumulates into FSDP's unsharded parameter (`FSDPParam._unsharded_param`, one tensor kept from
the first all-gather on), and each parameter group's `post_backward` then either keeps that
gradient (`set_requires_gradient_sync(False)`: accumulation) or reduce-scatters it, leaving on
each rank its shard of the average over ranks as the sharded parameter's `.grad`. What is exact:

- micro-batch |h_j|²: a tensor hook on each unsharded parameter sees h_j before it is accumulated;
- rank-local |Σ_j h_j|²: the unsharded gradient (with a reduce dtype: FSDP's accumulated copy)
  when the sync backward's `post_backward` begins, before the reduce-scatter frees it;
- reduced: |this rank's shard|² from `.grad` at the optimizer step. Shards are disjoint slices of
  one averaged gradient, so the sidecar sums them over ranks (StepEnd.reduced_is_shard).

We wrap `post_backward` on each group instance (FSDP calls it through the attribute) and hook the
unsharded parameters from a forward post-hook (they exist once FSDP has all-gathered): the
numerics are FSDP's own. Not supported, and said at watch(): FSDP1 (FullyShardedDataParallel),
HSDP or FSDP over tensor parallelism (a 2-D mesh: shards would be counted once per replica),
parameters FSDP does not manage (no reduce), and a torch without graph-task ids. Dense and sketch
mode and the per-example source fall back to norms mode (said at watch()): dense shards of a sharded
gradient are not implemented.
"""
from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Sequence

import torch

from ._guard import Guard

logger = logging.getLogger("noisescope")

_graph_task_id = getattr(torch._C, "_current_graph_task_id", None)


def find_fsdp(model: torch.nn.Module) -> tuple[list[Any], str]:
    """(FSDP2 modules in `model`, why not supported): ([], '') when the model is not sharded by FSDP."""
    fsdp1 = _fsdp1_class()
    if fsdp1 is not None and any(isinstance(m, fsdp1) for m in model.modules()):
        return [], (
            "FSDP1 (FullyShardedDataParallel) flattens the parameters into FlatParameters whose per-layer gradients "
            "noisescope does not read; use FSDP2 (torch.distributed.fsdp.fully_shard)"
        )
    if any(getattr(p, "_fsdp_flattened", False) for p in model.parameters()):
        return [], (
            "the model's parameters belong to an FSDP1 (FullyShardedDataParallel) wrapper, whose flattened gradients "
            "noisescope does not read; use FSDP2 (torch.distributed.fsdp.fully_shard)"
        )
    try:
        from torch.distributed.fsdp import FSDPModule
    except Exception:
        return [], ""
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not modules:
        return [], ""
    if _graph_task_id is None:
        return [], f"this torch ({torch.__version__}) has no graph-task ids to tell FSDP's backward passes apart"
    return modules, ""


def _fsdp1_class() -> Any:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel
    except Exception:
        return None


def _groups(modules: Sequence[Any]) -> list[Any]:
    groups = []
    for module in modules:
        group = module._get_fsdp_state()._fsdp_param_group
        if group is not None and group not in groups:
            groups.append(group)
    return groups


class FsdpSource:
    """Per measured step: each layer's |h_j|² per backward, the rank-local |Σ_j h_j|², and |this rank's reduced shard|²."""

    def __init__(self, modules: Sequence[Any], params: Sequence[torch.nn.Parameter], guard: Guard) -> None:
        self.guard = guard
        self._modules = list(modules)
        self._params = list(params)
        self._index = {id(p): i for i, p in enumerate(params)}
        self._groups = _groups(modules)
        self._lock = threading.Lock()
        self._hooked: dict[int, Any] = {}  # id(unsharded parameter) → its hook's handle
        self._forward_handles: list[Any] = []
        self._measuring = False
        self.begin_step(False)

    def unsupported(self) -> str:
        """Why this FSDP configuration cannot be measured, or ''."""
        for group in self._groups:
            mesh = getattr(group, "mesh_info", None)
            if mesh is not None and getattr(mesh, "mesh", None) is not None and mesh.mesh.ndim != 1:
                return (
                    f"HSDP or FSDP on a {mesh.mesh.ndim}-D device mesh: each shard of the reduced gradient sits on "
                    "several ranks, and per-rank figures would count it once per replica"
                )
            if any(getattr(fp, "is_dtensor", False) for fp in group.fsdp_params):
                return "FSDP over tensor-parallel (DTensor) parameters: the rank-local gradient is itself sharded"
        from torch.distributed.tensor import DTensor

        plain = [i for i, p in enumerate(self._params) if not isinstance(p, DTensor)]
        if plain:
            return (
                f"{len(plain)} of {len(self._params)} measured parameters are not sharded by fully_shard (FSDP never "
                "reduces their gradients across ranks): call fully_shard on the root module too"
            )
        managed = {id(fp.sharded_param) for group in self._groups for fp in group.fsdp_params}
        if any(id(p) not in managed for p in self._params):
            return "some measured parameters are DTensors that no FSDP parameter group manages"
        return ""

    def attach(self) -> None:
        for group in self._groups:
            original = group.post_backward

            def post_backward(*args: Any, _group: Any = group, _original: Any = original) -> Any:
                if self._measuring:
                    self._before_post_backward(_group)
                return _original(*args)

            group.post_backward = post_backward  # FSDP calls it through the instance attribute
        for module in self._modules:
            self._forward_handles.append(module.register_forward_hook(self._after_forward))

    def detach(self) -> None:
        self._measuring = False
        for handle in self._forward_handles:
            handle.remove()
        self._forward_handles.clear()
        for handle in self._hooked.values():
            handle.remove()
        self._hooked.clear()
        for group in self._groups:
            group.__dict__.pop("post_backward", None)  # back to the class's method

    def begin_step(self, measuring: bool) -> None:
        with self._lock:
            self._measuring = measuring
            self._tasks: dict[int, int] = {}  # graph task id → micro-batch index
            self._running: list[int] = []  # graph tasks whose backward has not finished
            self._micro: list[list[Any]] = []
            self._local: list[Any] = [None] * len(self._params)
            self._syncs: set[Any] = set()  # micro-batches (or unknown tasks) whose backward reduce-scattered

    # ------------------------------------------------------------ hooks

    def _after_forward(self, module: Any, args: Any, output: Any) -> None:
        """The unsharded parameters exist once FSDP all-gathered them: hook any we have not (cheap when none is new)."""
        if not self._measuring:
            return  # hooked by the first measured step's forward, before its backward
        try:
            group = module._get_fsdp_state()._fsdp_param_group
            if group is None:
                return
            for fp in group.fsdp_params:
                unsharded = getattr(fp, "_unsharded_param", None)
                index = self._index.get(id(fp.sharded_param))
                if unsharded is None or index is None or id(unsharded) in self._hooked:
                    continue
                self._hooked[id(unsharded)] = unsharded.register_hook(self._grad_hook(index))
        except Exception as error:
            self.guard.trip("the FSDP forward hook", error)

    def _micro_index(self) -> int:
        """Which micro-batch (backward pass) of the step the running backward is."""
        task = _graph_task_id()  # type: ignore[misc]
        micro = self._tasks.get(task)
        if micro is not None:
            return micro
        with self._lock:
            if self._running:
                micro = self._tasks[self._running[0]]  # a backward inside a running one (reentrant checkpointing)
            else:
                micro = len(self._micro)
                self._micro.append([None] * len(self._params))
            self._tasks[task] = micro
            self._running.append(task)
        torch.autograd.Variable._execution_engine.queue_callback(functools.partial(self._backward_done, task))
        return micro

    def _backward_done(self, task: int) -> None:
        with self._lock:
            if task in self._running:
                self._running.remove(task)

    def _grad_hook(self, index: int) -> Any:
        def hook(grad: torch.Tensor) -> None:
            if self._measuring and not self.guard.tripped:
                try:
                    from ._meter import _sq_norm

                    row = self._micro[self._micro_index()]
                    norm = _sq_norm(grad)
                    row[index] = norm if row[index] is None else row[index] + norm
                except Exception as error:
                    self.guard.trip("the FSDP gradient hook", error)
            return None

        return hook

    def _before_post_backward(self, group: Any) -> None:
        """On the sync backward, the rank-local accumulated gradient before FSDP reduce-scatters it."""
        try:
            if self.guard.tripped or not group.reduce_grads:
                return
            from ._meter import _grad_sq_norms

            grads, indices = [], []
            for fp in group.fsdp_params:
                index = self._index.get(id(fp.sharded_param))
                if index is None or not hasattr(fp, "_unsharded_param"):
                    continue
                fp.accumulate_unsharded_grad_if_needed()  # FSDP's own first step (idempotent): one tensor holds Σ_j h_j
                grad = fp.unsharded_accumulated_grad if fp.unsharded_accumulated_grad is not None else fp._unsharded_param.grad
                if grad is not None:
                    grads.append(grad)
                    indices.append(index)
            if not grads:
                return
            task = _graph_task_id()  # type: ignore[misc]
            self._syncs.add(self._tasks.get(task, ("task", task)))
            for index, norm in zip(indices, _grad_sq_norms(grads)):
                self._local[index] = norm
        except Exception as error:
            self.guard.trip("the FSDP post-backward hook", error)

    # ------------------------------------------------------------ at the optimizer step

    def take(self) -> tuple[list[list[Any]], list[Any], list[Any], str]:
        """This step's (micro-batch rows, rank-local, reduced shard, why not); why-not is '' when all are whole."""
        from ._meter import _grad_sq_norms

        with self._lock:
            micro, local, syncs = self._micro, self._local, len(self._syncs)
        if syncs > 1:
            return [], [], [], (
                "FSDP reduce-scattered the gradients on more than one backward pass of this step, so the rank-local "
                "accumulated gradient was never whole on this rank: call model.set_requires_gradient_sync(False) "
                "before all but the last micro-batch's backward"
            )
        if syncs == 0 or any(v is None for v in local):
            missing = sum(v is None for v in local)
            return [], [], [], f"FSDP reduce-scattered no gradient for {missing} of {len(local)} layers in this step"
        if not micro:
            return [], [], [], "no micro-batch gradient of this step reached FSDP's unsharded parameters while hooked"
        shards = []
        for p in self._params:
            grad = p.grad
            shards.append(None if grad is None else grad.to_local() if hasattr(grad, "to_local") else grad)
        if any(g is None for g in shards):
            return [], [], [], "a sharded parameter had no .grad at the optimizer step"
        reduced = _grad_sq_norms(shards)
        if len(micro) == 1:
            micro = [list(local)]  # one backward: h_1 is the rank-local gradient
        # A layer without a gradient in some micro-batch (unused there) contributed zero.
        rows = [[0.0 if v is None else v for v in row] for row in micro]
        return rows, list(local), reduced, ""


def norms_under_fsdp(model: torch.nn.Module, params: Sequence[torch.nn.Parameter], mode: str, source: str) -> tuple[str, str]:
    """(mode, source) to watch with: for a model FSDP2 shards in a way it measures, dense and sketch mode
    become norms and the per-example source accumulation, said in one log line; otherwise unchanged."""
    try:
        modules, why = find_fsdp(model)
        if not modules or why or FsdpSource(modules, params, Guard()).unsupported():
            return mode, source  # not FSDP, or fsdp_source says why it is not measured
    except Exception:
        return mode, source  # fsdp_source meets the same error and says so
    if mode != "norms":
        logger.warning(
            "noisescope: FSDP2 with mode %r: %s of a sharded gradient are not implemented (each rank holds only its shard "
            "of the reduced gradient, and whole micro-batch gradients exist only inside FSDP's backward); falling back to "
            "mode 'norms' (each layer's micro-batch, rank-local and reduced-shard squared norms)",
            mode,
            "dense shards" if mode == "dense" else "sketches",
        )
        return "norms", source  # watch() refuses the per-example source outside norms mode
    if source == "per-example":
        logger.warning(
            "noisescope: FSDP2 with source='per-example': per-example norms of a sharded model are not implemented (FSDP "
            "runs its modules on unsharded copies of the weights); falling back to norms from accumulation micro-batches "
            "and ranks (source='accumulation')"
        )
        return mode, "accumulation"
    return mode, source


def fsdp_source(model: torch.nn.Module, params: Sequence[torch.nn.Parameter], guard: Guard) -> tuple[FsdpSource | None, bool]:
    """(the FSDP source, or None when the model is not FSDP; off): off is True when the model is sharded
    in a way noisescope cannot measure; it then says exactly which and why, and hooks nothing. Call
    norms_under_fsdp first: dense, sketch and per-example hooks would see no gradient under FSDP."""
    try:
        modules, why = find_fsdp(model)
        source = None
        if modules and not why:
            source = FsdpSource(modules, params, guard)
            why = source.unsupported()
        if why:
            logger.warning("noisescope: this FSDP configuration is not supported (%s); training continues unwatched", why)
            return None, True
        if source is None:
            return None, False
        source.attach()
        logger.info(
            "noisescope: FSDP2: each layer's micro-batch and rank-local gradient are measured before FSDP reduce-scatters "
            "them, and this rank's shard of the reduced gradient at the optimizer step (the sidecar sums the shards); "
            "accumulate with set_requires_gradient_sync(False) for the rank-local level"
        )
        return source, False
    except Exception as error:  # never into the training loop
        logger.warning("noisescope: could not inspect the model's FSDP sharding (%s: %s); training continues unwatched",
                       type(error).__name__, error)
        return None, True
