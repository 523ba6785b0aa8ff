"""Profile: where the per-example source's CPU time goes, per layer, on the overhead benchmark's models.

Run: .venv/bin/python test/python/bench_per_example_profile.py [model substring ...]

Terms computed inline (no worker thread), torch on one thread, the real sidecar in its own process.
Per measured step, thread CPU time of: the terms of each covered layer (`_compute_terms`, by module and
input shape, with the minor page faults it took), the forward and δ hooks around them (Python, locks,
hand-off), and the step end (`take`). Beside them: process CPU per step with no hook, with the norms
alone, and with per-example sums, so "per-ex − norms" can be compared with what the parts add up to.
"""
from __future__ import annotations

import argparse
import collections
import logging
import resource
import sys
import time
from typing import Any, Callable

import torch

import noisescope
from noisescope import _per_example as pe
from bench_overhead import QuietSidecar
from bench_per_example_overhead import WORKLOADS, mean_step_time

_cpu_ns: collections.Counter[str] = collections.Counter()
_faults: collections.Counter[str] = collections.Counter()


def _timed(fn: Callable[..., Any], key: Callable[..., str]) -> Callable[..., Any]:
    def wrapper(*args: Any) -> Any:
        name = key(*args)
        faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        started = time.thread_time_ns()
        try:
            return fn(*args)
        finally:
            _cpu_ns[name] += time.thread_time_ns() - started
            _faults[name] += resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults

    return wrapper


def _layer(self: Any, row: Any, module: Any, calls: list[Any]) -> str:
    x = calls[0].x
    shape = tuple(x.shape) if isinstance(x, torch.Tensor) else ""
    return f"terms {type(module).__name__}{shape}"


def _instrument() -> None:
    pe.PerExample._compute_terms = _timed(pe.PerExample._compute_terms, _layer)  # type: ignore[method-assign]
    pe.PerExample._on_forward = _timed(pe.PerExample._on_forward, lambda *a: "forward hooks")  # type: ignore[method-assign]
    pe.PerExample._on_delta = _timed(pe.PerExample._on_delta, lambda *a: "δ hooks (incl. terms)")  # type: ignore[method-assign]
    pe.PerExample.take = _timed(pe.PerExample.take, lambda *a: "take (step end)")  # type: ignore[method-assign]


def profile(name: str, address: str, steps: int) -> None:
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
        with noisescope.watch(model, opt, address=address, every=1, source=source, run=f"profile-{name}-{source}") as ns:
            if ns._meter is not None and ns._meter._per_example is not None:
                ns._meter._per_example.overlap.enabled = False
            mean_step_time(model, opt, batch, loss_fn, 10)
            _cpu_ns.clear()
            _faults.clear()
            started = time.process_time()
            mean_step_time(model, opt, batch, loss_fn, steps)
            cpu[source] = (time.process_time() - started) / steps
    base = cpu["no hook"]
    print(
        f"{name}: process CPU per step {base * 1e3:.2f} ms no hook, norms {(cpu['accumulation'] - base) * 1e3:+.2f} ms, "
        f"per-example {(cpu['per-example'] - base) * 1e3:+.2f} ms (per-ex − norms {(cpu['per-example'] - cpu['accumulation']) * 1e3:+.2f} ms)"
    )
    terms = sum(v for k, v in _cpu_ns.items() if k.startswith("terms"))
    for key in sorted(_cpu_ns):
        print(f"    {key:<44} {_cpu_ns[key] / steps / 1e3:9.1f} µs   {_faults[key] / steps:6.0f} page faults")
    hooks = _cpu_ns["forward hooks"] + _cpu_ns["δ hooks (incl. terms)"] - terms
    print(f"    {'hooks without the terms':<44} {hooks / steps / 1e3:9.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="substrings of the models to profile (default: all)")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    logging.getLogger("noisescope").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    _instrument()
    sidecar = QuietSidecar()
    try:
        for name in WORKLOADS:
            if not args.models or any(m in name for m in args.models):
                profile(name, sidecar.address, args.steps)
    finally:
        sidecar.stop()


if __name__ == "__main__":
    sys.exit(main())
