"""Profile: where the per-example source's CPU time goes, per layer, on the overhead benchmark's models.

Run: .venv/bin/python test/python/bench_per_example_profile.py [--sample S] [--split ROUNDS [--worker]] [model substring ...]
     .venv/bin/python test/python/bench_per_example_profile.py --against REV [--rounds N] [model substring ...]

Terms computed inline (no worker thread), torch on one thread, the real sidecar in its own process.
Per measured step, thread CPU time of: the terms of each covered layer (`_compute_terms`, by module and
input shape, with the minor page faults it took), the forward and δ hooks around them (Python, locks,
hand-off), and the step end (`take`). Beside them: process CPU per step with no hook, with the norms
alone, and with per-example sums, so "per-ex − norms" can be compared with what the parts add up to.
--split: the interleaved split below (hooks vs terms vs where the terms run); "tiny" selects a model of 16
tiny convolutions whose per-layer fixed cost is large enough to measure.
--against REV: REV's `_per_example.py` (its PerExample class, on the working tree's math modules) against the working
tree's, interleaved rounds: the training thread's CPU and the process CPU per step over no hook (medians of in-round
differences), and the per-example sums of one float64 and one float32 step of each, compared.

What it showed at s = 1 on the benchmark CNN (Dec 2026, 2 shared cores): of ~0.2–0.3 ms per conv layer, the one
example's weight-gradient kernel is 45–150 µs; ~15–20 small ops around it (selection, views, dots, fp64
conversions, bias sum) ~40–60 µs warm; running amid the backward cost ~90 µs more than the same call repeated at
once (cold caches: now deferred to the step's end when inline and sampled); the hooks ~40–45 µs (forward hook
~20 µs of it; a node pre-hook instead of Tensor.register_hook measured no better); the worker hand-off ~20 µs CPU.

Linears on [B, d] rows (Dec 2026, MLP 784-512-512-10 b=64, load 1.5–2.6): amid a step each small torch op costs
~10 µs of training-thread CPU (2–4× its cost timed alone; the first ops after the backward ~3×: the step-end
batch costs 52 µs once, 14–17 µs repeated at once), so a row Linear's cost is its op count. Before: ~9 ops per
layer in its δ hook (~75 µs a layer); now two row norms there (~20 µs) and four ops per micro-batch for all
row Linears at the step's end (~55–70 µs with the Python around them); per-example over norms 442 → 340 µs
per step (1024-wide MLP b=128: 835 → 486 µs), `--against 2eeb2ea MLP`. Tried and dropped: |x_e| in the forward
hook (+44 µs a step: the forward's extra op costs more than reading x again at δ); the batch at the backward's
end callback or at the last δ (the same cost, moved); a node pre-hook (forward hooks −10 µs, total within noise).
The forward hook (Dec 2026, `--against 184fb67`, load 1.4–1.8): a Linear's own slim hook and δ's hook set straight
into the output's hook dict (no RemovableHandle): forward hooks 76 → 47 µs a step on the 512 MLP (3 Linears),
249 → 188 µs on the benchmark block (8 modules); sums bitwise the same.
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

import noisescope
from noisescope import _per_example as pe
from bench_overhead import QuietSidecar, fixed_malloc
from bench_per_example_before_after import fresh, unhooked
from bench_per_example_overhead import WORKLOADS as BENCH_WORKLOADS, mean_step_time

LAYERS = 16


def _tiny_convs() -> torch.nn.Module:
    return torch.nn.Sequential(*(torch.nn.Conv2d(4, 4, 3, padding=1) for _ in range(LAYERS)), torch.nn.Flatten(), torch.nn.Linear(256, 10))


# A model of many tiny layers: its per-example arithmetic is small, so (hooks only − norms) / layers is the fixed
# cost per covered layer (forward hook, tensor hook, locks, hand-off) in measurable amounts.
WORKLOADS = {
    **BENCH_WORKLOADS,
    f"{LAYERS} tiny convs 4x8x8 (b=8)": (
        _tiny_convs, lambda g: (torch.randn(8, 4, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)),
        torch.nn.functional.cross_entropy,
    ),
}

_cpu_ns: collections.Counter[str] = collections.Counter()
_faults: collections.Counter[str] = collections.Counter()
# Terms timed while a δ hook runs (inline exact ones); sampled inline terms run in take, at the step's end.
_in_delta = [0, 0]  # [δ hooks running now, their terms' ns]


def _timed(fn: Callable[..., Any], key: Callable[..., str]) -> Callable[..., Any]:
    def wrapper(*args: Any) -> Any:
        name = key(*args)
        faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        started = time.thread_time_ns()
        try:
            return fn(*args)
        finally:
            spent = time.thread_time_ns() - started
            _cpu_ns[name] += spent
            _faults[name] += resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults
            if _in_delta[0] and name.startswith("terms"):
                _in_delta[1] += spent

    return wrapper


def _delta_hook(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any) -> Any:
        _in_delta[0] += 1
        try:
            return fn(*args)
        finally:
            _in_delta[0] -= 1

    return wrapper


def _layer(self: Any, row: Any, module: Any, calls: list[Any]) -> str:
    x = calls[0].x
    shape = tuple(x.shape) if isinstance(x, torch.Tensor) else ""
    return f"terms {type(module).__name__}{shape}"


def _instrument() -> None:
    pe.PerExample._compute_terms = _timed(pe.PerExample._compute_terms, _layer)  # type: ignore[method-assign]
    pe.PerExample._on_forward = _timed(pe.PerExample._on_forward, lambda *a: "forward hooks")  # type: ignore[method-assign]
    pe.PerExample._on_delta = _delta_hook(_timed(pe.PerExample._on_delta, lambda *a: "δ hooks (incl. terms)"))  # type: ignore[method-assign]
    pe.PerExample.take = _timed(pe.PerExample.take, lambda *a: "take (step end)")  # type: ignore[method-assign]
    pe.pem.row_norms = _timed(pe.pem.row_norms, lambda *a: "terms: row Linears' |x_e|, |δ_e| (δ hooks)")
    pe._row_linear_sums = _timed(pe._row_linear_sums, lambda *a: "row Linears' sums, batched (in take)")


def profile(name: str, address: str, steps: int, sample: int | float | None) -> None:
    make, data, loss_fn = WORKLOADS[name]
    batch = data(torch.Generator().manual_seed(1))
    cpu: dict[str, float] = {}
    for source in (None, "accumulation", "per-example"):
        torch.manual_seed(0)
        model = make()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        if source is None:
            mean_step_time(model, opt, batch, loss_fn, 10)
            started = time.process_time()
            mean_step_time(model, opt, batch, loss_fn, steps)
            cpu["no hook"] = (time.process_time() - started) / steps
            continue
        run = f"profile-{name}-{source}"
        chosen = sample if source == "per-example" else None
        with noisescope.watch(model, opt, address=address, every=1, source=source, run=run, per_example_sample=chosen) as ns:
            if ns._meter is not None and ns._meter._per_example is not None:
                ns._meter._per_example.overlap.enabled = False
            mean_step_time(model, opt, batch, loss_fn, 10)
            _cpu_ns.clear()
            _faults.clear()
            _in_delta[1] = 0
            started = time.process_time()
            mean_step_time(model, opt, batch, loss_fn, steps)
            cpu[source] = (time.process_time() - started) / steps
    base = cpu["no hook"]
    print(
        f"{name}: process CPU per step {base * 1e3:.2f} ms no hook, norms {(cpu['accumulation'] - base) * 1e3:+.2f} ms, "
        f"per-example {(cpu['per-example'] - base) * 1e3:+.2f} ms (per-ex − norms {(cpu['per-example'] - cpu['accumulation']) * 1e3:+.2f} ms)"
    )
    for key in sorted(_cpu_ns):
        print(f"    {key:<44} {_cpu_ns[key] / steps / 1e3:9.1f} µs   {_faults[key] / steps:6.0f} page faults")
    hooks = _cpu_ns["forward hooks"] + _cpu_ns["δ hooks (incl. terms)"] - _in_delta[1]  # not the step-end terms
    print(f"    {'hooks without the terms':<44} {hooks / steps / 1e3:9.1f} µs")


SPLIT = ("no hook", "norms", "per-example", "per-ex hooks only", "per-ex in backward")


def _in_backward(self: Any, row: Any, module: Any, calls: list[Any]) -> None:
    """`_dispatch` inline as before sampled terms waited for the step's end: each layer's terms amid the backward."""
    self._compute(row, module, calls)


def _no_arithmetic(self: Any, row: Any, module: Any, calls: list[Any]) -> None:
    """`_compute_terms` without the terms: every index the layer fills gets a constant (the plumbing stays real)."""
    for c in calls:
        c.x = c.stats = None
    if isinstance(module, pe.pmore.Unit):
        indices = [*module.attention.values(), *(i for pair in module.slots.values() for i in pair)]
    else:
        indices = list(self._modules[module])
    with self._lock:
        for index in indices:
            if index is not None:
                row.sums[index] = _ONE


_ONE = torch.ones((), dtype=torch.float64)


def _no_row_norms(t: torch.Tensor) -> torch.Tensor:
    """A row Linear's |x_e| or |δ_e| without the arithmetic."""
    return _ONE


def _no_row_sums(rows: list[Any], ones: Any) -> None:
    """The step-end row Linears' sums without the arithmetic: each index they fill gets a constant."""
    for row in rows:
        for weight, bias, _, _ in row.linear:
            for index in (weight, bias):
                if index is not None:
                    row.sums[index] = 1.0
        row.linear = []


def split(name: str, address: str, rounds: int, steps: int, sample: int | float | None, worker: bool) -> None:
    """Process CPU per step, interleaved rounds (median): no hook, norms, per-example, and per-example with
    the terms' arithmetic stubbed out: its difference from "norms" is the hooks' fixed cost (forward hook, tensor
    hook, locks, the draw, worker hand-off, take), the rest the arithmetic (with the sample's selection). Inline, also
    per-example with each layer's terms computed amid the backward (as before sampled ones waited for the step's end)."""
    make, data, loss_fn = WORKLOADS[name]
    batch = data(torch.Generator().manual_seed(1))
    compute, dispatch, row_norms, row_sums = pe.PerExample._compute_terms, pe.PerExample._dispatch, pe.pem.row_norms, pe._row_linear_sums
    labels = [c for c in SPLIT if not (worker and c == "per-ex in backward")]
    cpu: dict[str, list[float]] = {c: [] for c in labels}
    for r in range(rounds):
        for label in labels:
            model, opt = fresh(make)
            if label == "no hook":
                cpu[label].append(unhooked(model, opt, batch, loss_fn, steps)[1])
                continue
            source = "accumulation" if label == "norms" else "per-example"
            stub = label == "per-ex hooks only"
            pe.PerExample._compute_terms = _no_arithmetic if stub else compute  # type: ignore[method-assign]
            pe.pem.row_norms, pe._row_linear_sums = (_no_row_norms, _no_row_sums) if stub else (row_norms, row_sums)
            pe.PerExample._dispatch = _in_backward if label == "per-ex in backward" else dispatch  # type: ignore[method-assign]
            chosen = sample if source == "per-example" else None
            run = f"split-{name}-{label}-{r}"
            try:
                with noisescope.watch(model, opt, address=address, every=1, source=source, run=run, per_example_sample=chosen) as ns:
                    per_example = ns._meter._per_example if ns._meter is not None else None
                    if per_example is not None:
                        per_example.overlap.enabled = worker
                    mean_step_time(model, opt, batch, loss_fn, 5)
                    started = time.process_time()
                    mean_step_time(model, opt, batch, loss_fn, steps)
                    if per_example is not None:
                        per_example.overlap.wait()
                    cpu[label].append((time.process_time() - started) / steps)
            finally:
                pe.PerExample._compute_terms, pe.PerExample._dispatch = compute, dispatch  # type: ignore[method-assign]
                pe.pem.row_norms, pe._row_linear_sums = row_norms, row_sums
    def paired(a: str, b: str) -> float:  # median over rounds of a − b within the round (a busy machine moves both)
        return statistics.median(x - y for x, y in zip(cpu[a], cpu[b])) * 1e3

    print(
        f"{name} (sample {sample}, {'worker' if worker else 'inline'}): process CPU per step, medians over {rounds} rounds "
        f"of in-round differences: no hook {statistics.median(cpu['no hook']) * 1e3:.2f} ms, norms "
        f"{paired('norms', 'no hook'):+.2f} ms, per-example {paired('per-example', 'no hook'):+.2f} ms; over the norms: "
        f"hooks {paired('per-ex hooks only', 'norms'):+.2f} ms, terms {paired('per-example', 'per-ex hooks only'):+.2f} ms"
        + ("" if worker else f"; sampled terms at the step's end − amid the backward {paired('per-example', 'per-ex in backward'):+.2f} ms")
    )


def _per_example_at(revision: str, folder: str) -> Any:
    """REV's _per_example module (or that file's, a variant being tried), importing the working tree's math modules."""
    root = Path(__file__).resolve().parents[2]
    source = Path(revision).read_text() if Path(revision).is_file() else subprocess.run(
        ["git", "show", f"{revision}:python-shim/noisescope/_per_example.py"], cwd=root, check=True, capture_output=True, text=True
    ).stdout
    path = Path(folder) / "_per_example.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("noisescope._per_example_then", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _sums(make: Callable[[], torch.nn.Module], batch: Any, loss_fn: Callable, address: str, dtype: torch.dtype, worker: bool = False) -> list:
    """One measured step's per-example sums, as sent."""
    torch.manual_seed(0)
    model = make().to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    records: list = []
    with noisescope.watch(model, opt, address=address, every=1, source="per-example", run="against-sums") as ns:
        ns._sender.tap = records.append
        ns._meter._per_example.overlap.enabled = worker
        x = batch[0].to(dtype) if batch[0].is_floating_point() else batch[0]
        opt.zero_grad()
        loss_fn(model(x), batch[1]).backward()
        opt.step()
    sums = records[0].per_example_sums if records else None
    return sums[0] if sums else []


def against(name: str, address: str, rounds: int, steps: int, then: Any, micro: int = 1, worker: bool = False) -> None:
    """REV's PerExample against the working tree's, interleaved; figures per step over no hook (in-round differences)."""
    make, data, loss_fn = WORKLOADS[name]
    batch = data(torch.Generator().manual_seed(1))
    tree = pe.PerExample
    labels = ("no hook", "norms", "then", "now")
    thread: dict[str, list[float]] = {c: [] for c in labels}
    process: dict[str, list[float]] = {c: [] for c in labels}
    parts: dict[str, collections.Counter[str]] = {"then": collections.Counter(), "now": collections.Counter()}
    measured: dict[str, collections.Counter[str]] = {"then": collections.Counter(), "now": collections.Counter()}
    timed = {label: _parts_timed(then.PerExample if label == "then" else tree, parts[label]) for label in parts}
    try:
        for r in range(rounds):
            for label in labels:
                model, opt = fresh(make)
                if label == "no hook":
                    mean_step_time(model, opt, batch, loss_fn, 5, micro)
                    started, cpu = time.thread_time(), time.process_time()
                    mean_step_time(model, opt, batch, loss_fn, steps, micro)
                    thread[label].append((time.thread_time() - started) / steps)
                    process[label].append((time.process_time() - cpu) / steps)
                    continue
                pe.PerExample = timed.get(label, tree)  # type: ignore[misc]  # watch() imports it lazily
                source = "accumulation" if label == "norms" else "per-example"
                with noisescope.watch(model, opt, address=address, every=1, source=source, run=f"against-{name}-{label}-{r}") as ns:
                    if ns._meter is not None and ns._meter._per_example is not None:
                        ns._meter._per_example.overlap.enabled = worker
                    mean_step_time(model, opt, batch, loss_fn, 5, micro)
                    warm = dict(parts.get(label, {}))
                    started, cpu = time.thread_time(), time.process_time()
                    mean_step_time(model, opt, batch, loss_fn, steps, micro)
                    thread[label].append((time.thread_time() - started) / steps)
                    process[label].append((time.process_time() - cpu) / steps)
                    if label in parts:  # the measured steps' share only
                        measured[label].update({k: v - warm.get(k, 0) for k, v in parts[label].items()})
        sums = {}
        for label in ("then", "now"):
            pe.PerExample = then.PerExample if label == "then" else tree  # type: ignore[misc]
            sums[label] = {dtype: _sums(make, batch, loss_fn, address, dtype, worker) for dtype in (torch.float64, torch.float32)}
    finally:
        pe.PerExample = tree  # type: ignore[misc]

    def paired(times: dict[str, list[float]], a: str, b: str = "no hook") -> str:
        return f"{statistics.median(x - y for x, y in zip(times[a], times[b])) * 1e6:+7.0f} µs"

    for title, times in (("training thread", thread), ("process", process)):
        print(
            f"{name}{f' as {micro} micro-batches' if micro > 1 else ''} {title} CPU per step, median of {rounds} rounds: no hook {statistics.median(times['no hook']) * 1e3:.2f} ms; "
            f"norms {paired(times, 'norms')}, per-example then {paired(times, 'then')}, now {paired(times, 'now')}; "
            f"now − then {paired(times, 'now', 'then')}"
        )
    for key in ("forward hooks", "δ hooks", "δ hooks' _dispatch", "take (step end)"):
        then_ns, now_ns = (measured[label][key] / (rounds * steps) for label in ("then", "now"))
        print(f"    {key:<18} thread CPU per step (mean) then {then_ns / 1e3:6.1f} µs, now {now_ns / 1e3:6.1f} µs")
    for dtype in (torch.float64, torch.float32):
        a, b = sums["then"][dtype], sums["now"][dtype]
        if not a or len(a) != len(b):
            print(f"    sums {str(dtype):<14} then {len(a)} layers, now {len(b)}: not compared")
            continue
        worst = max(abs(x - y) / max(abs(x), 1e-300) for x, y in zip(a, b) if x is not None)
        print(f"    sums {str(dtype):<14} {len(a)} layers, largest relative difference now vs then {worst:.1e}")


def _parts_timed(cls: type, spent: collections.Counter[str]) -> type:
    """A subclass of `cls` whose hooks and take() add their thread CPU (ns) to `spent`."""

    def timed(method: Callable[..., Any], key: str) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            started = time.thread_time_ns()
            try:
                return method(*args)
            finally:
                spent[key] += time.thread_time_ns() - started

        return wrapper

    methods = {
        "_on_forward": timed(cls._on_forward, "forward hooks"),
        "_on_delta": timed(cls._on_delta, "δ hooks"),
        "take": timed(cls.take, "take (step end)"),
        "_dispatch": timed(cls._dispatch, "δ hooks' _dispatch"),  # with --worker: the hand-offs
    }
    if hasattr(cls, "_on_forward_linear"):  # Linears' own forward hook (it calls _on_forward only for the unusual)
        methods["_on_forward_linear"] = timed(cls._on_forward_linear, "forward hooks")
    return type(cls.__name__, (cls,), methods)


def _sample(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="substrings of the models to profile (default: all)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--split", type=int, metavar="ROUNDS", help="only the interleaved split (hooks vs terms), this many rounds")
    parser.add_argument("--worker", action="store_true", help="--split, --against: terms on the worker thread where it would take them")
    parser.add_argument("--sample", type=_sample, default=None, help="per_example_sample: an int s, or a fraction of B")
    parser.add_argument("--against", metavar="REV", help="REV's _per_example.py (or a file's) against the working tree's (exact; inline unless --worker)")
    parser.add_argument("--rounds", type=int, default=9, help="--against: interleaved rounds")
    parser.add_argument("--micro", type=int, default=1, help="--against: the batch as this many micro-batches per step")
    parser.add_argument("--default-malloc", action="store_true", help="glibc's own malloc thresholds (page faults vary a step)")
    args = parser.parse_args()
    malloc = fixed_malloc(args.default_malloc)  # bench_overhead.FIXED_MALLOC: page faults would pass for the hook's CPU
    logging.getLogger("noisescope").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    if not args.split and not args.against:
        _instrument()
    sidecar = QuietSidecar()
    folder = tempfile.TemporaryDirectory()
    then = _per_example_at(args.against, folder.name) if args.against else None
    load = os.getloadavg()
    try:
        for name in WORKLOADS:
            if (not args.models and name in BENCH_WORKLOADS) or any(m in name for m in args.models):
                if then is not None:
                    against(name, sidecar.address, args.rounds, args.steps, then, args.micro, args.worker)
                elif args.split:
                    split(name, sidecar.address, args.split, args.steps, args.sample, args.worker)
                else:
                    profile(name, sidecar.address, args.steps, args.sample)
        print(f"load average (1/5/15 min) at the start {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, at the end "
              f"{'/'.join(f'{v:.2f}' for v in os.getloadavg())}; {malloc}")
    finally:
        sidecar.stop()
        folder.cleanup()


if __name__ == "__main__":
    sys.exit(main())
