"""DDP training on load_digits for the DDP tests: the worker each spawned rank runs, and the one-process reference.

Every optimizer step trains on one global batch of WORLD·K·MICRO examples (a fresh seeded draw per
step); rank r's micro-batch j is the batch's (r·K + j)-th slice, so one process accumulating all
WORLD·K micro-batches in that order steps with the same gradient. Each rank writes what it saw
(its StepEnd figures, parameters, log lines) to `out/rank<r>.pt` for the test to check.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import sys
import time
from pathlib import Path
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


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(world: int, address: str, out: Path, scenario: str, steps: int, target: Any = None) -> tuple[list[int | None], list[dict[str, Any]]]:
    """Runs `target` (default `worker`) on `world` spawned ranks; their exit codes and what each wrote."""
    ctx = multiprocessing.get_context("spawn")
    port = _port()
    target = target or worker
    procs = [ctx.Process(target=target, args=(r, world, port, address, str(out), scenario, steps)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    results = []
    for r in range(world):
        path = out / f"rank{r}.pt"
        results.append(torch.load(path, weights_only=False) if path.exists() else {})
    return codes, results


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


def steps_of(sidecar: Any, run: str, count: int) -> list[dict[str, Any]]:
    """The sidecar's step events of `run`, once its step `count` − 1 arrived."""
    sidecar.wait_for(lambda e: e["type"] == "step" and e.get("run") == run and e["step"] == count - 1, timeout=60)
    return [e for e in sidecar.of_type("step") if e.get("run") == run]


def watch_one_process(address: str, run: str, steps: int, world: int, k: int = K) -> None:
    """The same global batches in one watched process, accumulating all world·k micro-batches per step."""
    import noisescope
    from noisescope.demo import make_model

    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    handle = noisescope.watch(model, opt, address=address, run=run)
    for step in range(steps):
        for m in range(world * k):
            x, y = batch(step, m, world, k)
            (F.cross_entropy(model(x), y) / (world * k)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    handle.remove(timeout=10)


def assert_within_each_others_interval(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two smoothed estimates: both positive, each B_simple inside the other's interval (the estimator's own uncertainty)."""
    for name in ("gradSqNorm", "traceSigma"):
        assert a[name] > 0 and b[name] > 0
    for x, y in ((a, b), (b, a)):
        low, high = y["interval"]["low"], y["interval"]["high"]
        assert x["bSimple"] is not None and low <= x["bSimple"] and (high is None or x["bSimple"] <= high), (a, b)


def by_hand(rank: int, world: int, k: int) -> torch.Tensor:
    """Step 0's rank-local accumulated gradient (loss / k), per layer |·|², from the initial parameters."""
    from noisescope.demo import make_model

    model = make_model()
    for j in range(k):
        x, y = batch(0, rank * k + j, world, k)
        (F.cross_entropy(model(x), y) / k).backward()
    return torch.tensor([p.grad.double().square().sum().item() for p in model.parameters()], dtype=torch.float64)


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


def _join(rank: int, world: int, port: int) -> tuple[_Lines, list[dict[str, Any]]]:
    """Joins the gloo group; the noisescope log lines and every StepEnd this rank sends, as they happen."""
    import torch.distributed as dist

    from noisescope import _wire

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
            "shard": end.reduced_is_shard,
        })
        return messages

    _wire.step_messages = record
    return lines, sent


def with_and_without(result: dict[str, Any], address: str, run: str, build: Any, fit: Any, part: Any = None) -> None:
    """Trains a `build()` model with `fit(model, opt)`, watching `part(model)` (default: the model), then a
    fresh one unwatched: bitwise-equal parameters (FSDP's gathered whole), the watched run's parameters
    and stats, into `result`."""
    import noisescope

    finals = {}
    for watched in (True, False):
        model = build()
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        handle = noisescope.watch(part(model) if part else model, opt, address=address, run=run) if watched else None
        fit(model, opt)
        if handle is not None:
            handle.remove(timeout=10)
            result["stats"] = handle.stats
        finals[watched] = [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for p in model.parameters()]
    result["bitwise"] = all(torch.equal(a, b) for a, b in zip(finals[True], finals[False]))
    result["params"] = finals[True]


def worker(rank: int, world: int, port: int, address: str, out: str, scenario: str, steps: int) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    import noisescope
    from noisescope.demo import make_model

    lines, sent = _join(rank, world, port)
    result: dict[str, Any] = {"rank": rank}
    try:
        if scenario == "train":
            # With the hook (watching the wrapped module), then the same training without it.
            def fit(ddp: Any, opt: torch.optim.Optimizer) -> None:
                train(ddp.module, ddp, opt, rank, world, steps)
                assert all(p.grad is None for p in ddp.parameters())

            with_and_without(result, address, f"ddp-{world}", lambda: DDP(make_model()), fit, part=lambda ddp: ddp.module)
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
        elif scenario == "per-example-thin":
            # A budget that would thin within a few steps in one process (test_per_example_auto_thinning.py).
            from test_per_example_sampled import DigitsConv

            from noisescope._per_example_budget import Budget

            for name, value in dict(FRACTION=1e-9, FLOOR_S=0.0, WARMUP=1, WINDOW=2, FUTILE=1e9, MAX_STRIDE=4).items():
                setattr(Budget, name, value)
            model = DigitsConv()
            ddp = DDP(model)
            opt = torch.optim.SGD(ddp.parameters(), lr=LR)
            handle = noisescope.watch(model, opt, address=address, run=f"thin-{world}", source="per-example")
            train(model, ddp, opt, rank, world, steps, k=1)
            result["size"] = handle._meter._per_example.budget.size
            handle.remove(timeout=10)
            result["stats"] = handle.stats
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
        # Barrier, destroy, os._exit: a DDP rank too died with SIGABRT after writing its results, barrier and all
        # (test_ddp_estimate_agrees_with_one_process_accumulating_the_same_batch, CI on a clean clone, Dec 2026).
        end_process_group()


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2: each Linear its own parameter group, then the root (which holds none here)."""
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def train_fsdp(model: Any, opt: torch.optim.Optimizer, rank: int, world: int, steps: int, k: int = K) -> None:
    """As `train`, accumulating with set_requires_gradient_sync(False) for all but the last micro-batch."""
    for step in range(steps):
        for j in range(k):
            x, y = batch(step, rank * k + j, world, k)
            if hasattr(model, "set_requires_gradient_sync"):
                model.set_requires_gradient_sync(j == k - 1)
            (F.cross_entropy(model(x), y) / k).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def fsdp_worker(rank: int, world: int, port: int, address: str, out: str, scenario: str, steps: int) -> None:
    """One FSDP rank; writes what it sent, its full parameters and log lines to `out/rank<r>.pt`."""
    import noisescope
    from noisescope.demo import make_model

    lines, sent = _join(rank, world, port)
    result: dict[str, Any] = {"rank": rank}
    try:
        if scenario == "train":
            with_and_without(
                result, address, f"fsdp-{world}", lambda: shard(make_model()), lambda m, o: train_fsdp(m, o, rank, world, steps)
            )
        elif scenario == "unsupported":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

            mesh = init_device_mesh("cpu", (1, world), mesh_dim_names=("replicate", "shard"))
            builds = {
                "fsdp1": lambda: FullyShardedDataParallel(make_model(), device_id=torch.device("cpu")),
                "hsdp": lambda: fully_shard(make_model(), mesh=mesh),
                "unsharded-root": lambda: _shard_only_first(make_model()),
            }
            for name, build in builds.items():
                finals = {}
                for watched in (True, False):
                    model = build()
                    opt = torch.optim.SGD(model.parameters(), lr=LR)
                    handle = noisescope.watch(model, opt, address=address, run=f"{name}-{world}") if watched else None
                    train_fsdp(model, opt, rank, world, 2) if name != "fsdp1" else train(model, model, opt, rank, world, 2)
                    if handle is not None:
                        result[f"{name}_enabled"] = handle.enabled
                        handle.remove(timeout=5)
                    with torch.no_grad():
                        finals[watched] = [
                            (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for p in model.parameters()
                        ]
                result[f"{name}_bitwise"] = all(torch.equal(a, b) for a, b in zip(finals[True], finals[False]))
            # Supported, but accumulating with gradient sync on every backward: no whole rank-local gradient.
            model = shard(make_model())
            opt = torch.optim.SGD(model.parameters(), lr=LR)
            handle = noisescope.watch(model, opt, address=address, run=f"sync-every-{world}")
            for step in range(2):
                for j in range(K):
                    x, y = batch(step, rank * K + j, world, K)
                    (F.cross_entropy(model(x), y) / K).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            handle.remove(timeout=5)
    finally:
        result["sent"] = sent
        result["log"] = lines.lines
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    end_process_group()


def end_process_group() -> None:
    """Ends a DDP or FSDP rank once its results are written: both ranks' gloo work done, the group destroyed, and the
    process left without the interpreter's finalisation. One FSDP2 rank in ~7 died with SIGABRT there, after writing
    its results ("terminate called without an active exception", no Python frame: torch's native threads at
    teardown) — 3 of 20 runs of the fallback test's trainings with noisescope not watching at all; a barrier
    before destroy_process_group made it rarer, not gone (CI on a clean clone hit it once more). Every watch() was
    removed before (its threads joined), so nothing of noisescope's is skipped."""
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _shard_only_first(model: torch.nn.Module) -> torch.nn.Module:
    """fully_shard on one layer only: the other layers' gradients are never reduced across ranks."""
    from torch.distributed.fsdp import fully_shard

    fully_shard(model[0])
    return model
