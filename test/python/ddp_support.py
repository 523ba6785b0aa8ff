"""DDP training on load_digits for the DDP tests: the worker each spawned rank runs, and the one-process reference.

Every optimizer step trains on one global batch of WORLD·K·MICRO examples (a fresh seeded draw per
step); rank r's micro-batch j is the batch's (r·K + j)-th slice, so one process accumulating all
WORLD·K micro-batches in that order steps with the same gradient. Each rank writes what it saw
(its StepEnd figures, parameters, log lines) to `out/rank<r>.pt` for the test to check.
"""
from __future__ import annotations

import logging
import os
import time
from datetime import timedelta
from typing import Any

import torch
import torch.nn.functional as F

MICRO, K, LR = 16, 2, 0.05


def batch(step: int, micro: int, world: int, k: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    """Global micro-batch `micro` (0 .. world·k − 1) of `step`."""
    from noisescope.demo import make_data

    data = _data(make_data)
    order = torch.randperm(len(data[0]), generator=torch.Generator().manual_seed(step))[: world * k * MICRO]
    picked = order[micro * MICRO : (micro + 1) * MICRO]
    return data[0][picked], data[1][picked]


_cache: dict[str, Any] = {}


def _data(make_data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if "data" not in _cache:
        _cache["data"] = make_data().tensors
    return _cache["data"]


def train(model: torch.nn.Module, ddp: Any, opt: torch.optim.Optimizer, rank: int, world: int, steps: int, k: int = K,
          first: int = 0, stop: Any = None, wrapped: Any = None) -> None:
    """`steps` optimizer steps, k micro-batches per rank under no_sync() but the last (when `ddp` is
    given; `wrapped` alone: a DDP model synchronising every backward); loss / k."""
    wrapped = wrapped if wrapped is not None else ddp if ddp is not None else model
    for step in range(first, first + steps):
        for j in range(k):
            x, y = batch(step, rank * k + j, world, k)
            last = j == k - 1
            if ddp is not None and not last:
                with ddp.no_sync():
                    (F.cross_entropy(wrapped(x), y) / k).backward()
            else:
                (F.cross_entropy(wrapped(x), y) / k).backward()
        if stop is not None:
            stop(step)
        opt.step()
        opt.zero_grad(set_to_none=True)


def reference(steps: int, world: int, k: int = K) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """One process, all world·k micro-batches accumulated per step (loss / (world·k)); the accumulated
    gradient's per-layer |·|² at each step, measured by hand."""
    from noisescope.demo import make_model

    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    norms = []
    for step in range(steps):
        for m in range(world * k):
            x, y = batch(step, m, world, k)
            (F.cross_entropy(model(x), y) / (world * k)).backward()
        norms.append(torch.tensor([p.grad.double().square().sum().item() for p in model.parameters()], dtype=torch.float64))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, norms


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def worker(rank: int, world: int, port: int, address: str, out: str, scenario: str, steps: int) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import noisescope
    from noisescope import _wire
    from noisescope.demo import make_model

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=30))
    lines = _Lines()
    logging.getLogger("noisescope").addHandler(lines)
    logging.getLogger("noisescope").setLevel(logging.INFO)
    sent: list[dict[str, Any]] = []
    real = _wire.step_messages

    def record(rec: Any, world_size: int) -> list[Any]:
        messages = real(rec, world_size)
        end = messages[-1].step_end
        sent.append({
            "step": end.step, "skipped": end.skipped, "skip_reason": end.skip_reason,
            "micro": [list(m.shard.sq_norms.values) for m in messages[:-1]],
            "accumulated": list(end.accumulated_sq_norms), "reduced": list(end.reduced_sq_norms),
        })
        return messages

    _wire.step_messages = record
    result: dict[str, Any] = {"rank": rank}
    try:
        if scenario == "train":
            # With the hook (watching the wrapped module), then the same training without it.
            finals = {}
            for watched in (True, False):
                model = make_model()
                ddp = DDP(model)
                opt = torch.optim.SGD(ddp.parameters(), lr=LR)
                handle = noisescope.watch(model, opt, address=address, run=f"ddp-{world}") if watched else None
                train(model, ddp, opt, rank, world, steps)
                if handle is not None:
                    handle.remove(timeout=10)
                    result["stats"] = handle.stats
                finals[watched] = [p.detach().clone() for p in model.parameters()]
                local = [p.grad for p in model.parameters()]
                assert all(g is None for g in local)
            result["bitwise"] = all(torch.equal(a, b) for a, b in zip(finals[True], finals[False]))
            result["params"] = finals[True]
        elif scenario == "fallback":
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            model = make_model()
            ddp = DDP(model)
            ddp.register_comm_hook(None, allreduce_hook)  # the user's hook
            opt = torch.optim.SGD(ddp.parameters(), lr=LR)
            handle = noisescope.watch(ddp, opt, address=address, run=f"fallback-{world}")  # the DDP module itself
            train(model, ddp, opt, rank, world, steps)
            handle.remove(timeout=10)
            result["stats"] = handle.stats
            # Then (our hook this time) accumulation without no_sync(): every backward all-reduces.
            result["fallback_sent"], sent[:] = list(sent), []
            model = make_model()
            ddp = DDP(model)
            opt = torch.optim.SGD(ddp.parameters(), lr=LR)
            handle = noisescope.watch(model, opt, address=address, run=f"sync-every-{world}")
            train(model, None, opt, rank, world, 2, wrapped=ddp)
            handle.remove(timeout=10)
        elif scenario == "bucket-view":
            # gradient_as_bucket_view: .grad is the bucket, all-reduced in place before the backward ends.
            for k, steps_k in ((2, steps), (1, steps)):
                model = make_model()
                ddp = DDP(model, gradient_as_bucket_view=True)
                opt = torch.optim.SGD(ddp.parameters(), lr=LR)
                handle = noisescope.watch(model, opt, address=address, run=f"view-{world}-k{k}")
                train(model, ddp, opt, rank, world, steps_k, k=k)
                handle.remove(timeout=10)
                result[f"k{k}"], sent[:] = list(sent), []
        elif scenario == "kill":
            model = make_model()
            ddp = DDP(model)
            opt = torch.optim.SGD(ddp.parameters(), lr=LR)
            handle = noisescope.watch(model, opt, address=address, run=f"kill-{world}")

            def stop(step: int) -> None:
                if rank == 1 and step == 3:
                    # A crash after steps 0–2 left this process: let the sender hand them to gRPC and
                    # gRPC put them on the wire (else which steps the sidecar joins depends on timing).
                    deadline = time.monotonic() + 10
                    while handle.stats.queued and time.monotonic() < deadline:
                        time.sleep(0.01)
                    time.sleep(1.0)
                    os._exit(17)  # after step 3's all-reduce, before its optimizer step: no StepEnd 3

            try:
                train(model, ddp, opt, rank, world, steps, stop=stop)
            except Exception as error:  # step 4's all-reduce: the peer is gone
                result["error"] = f"{type(error).__module__}.{type(error).__name__}: {error}"[:300]
            result["enabled_after_error"] = handle.enabled
            handle.remove(timeout=5)
            result["removed"] = True
            result["stats"] = handle.stats
    finally:
        result["sent"] = sent
        result["log"] = lines.lines
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    if scenario != "kill":
        dist.destroy_process_group()
