"""Benchmark: the per-example source's overhead with the per-example modules of an earlier revision
against the working tree's, interleaved in one process (so a busy machine's load falls on both alike).

Run: .venv/bin/python test/python/bench_per_example_before_after.py REVISION [--sample S] [model substring ...]

The earlier `_per_example_math` and `_per_example_more` come from `git show REVISION:…` and replace the
working tree's for the "before" configurations (the rest of the hook is the working tree's), with
every layer's terms eligible for the worker thread as before. Per round, each configuration trains
the overhead benchmark's model (torch on one thread, the real sidecar in its own process); the table
gives the median over rounds of its mean step time (and process CPU) relative to no hook in that round,
the median thread CPU per step spent computing the terms (`_compute_terms`, on whichever thread), and
the process's minor page faults per step.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch

import noisescope
from noisescope import _per_example as pe
from bench_overhead import QuietSidecar, fixed_malloc
from bench_per_example_overhead import WORKLOADS, mean_step_time

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ("norms", "before worker", "after worker", "before inline", "after inline")
_terms_ns = [0]  # thread CPU inside _compute_terms, whichever thread ran it: the arithmetic alone, steadiest under load


def _count_terms() -> None:
    compute = pe.PerExample._compute_terms

    def timed(self: pe.PerExample, *args: object) -> None:
        started = time.thread_time_ns()
        try:
            compute(self, *args)  # type: ignore[arg-type]
        finally:
            _terms_ns[0] += time.thread_time_ns() - started

    pe.PerExample._compute_terms = timed  # type: ignore[method-assign]


def fresh(make: Callable[[], torch.nn.Module]) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The same initial model every configuration and round, and its optimizer."""
    torch.manual_seed(0)
    model = make()
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def unhooked(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: Any, loss_fn: Callable, steps: int) -> tuple[float, float]:
    """(wall, process CPU) per step without the hook, after 5 warm-up steps."""
    mean_step_time(model, opt, batch, loss_fn, 5)
    started = time.process_time()
    return mean_step_time(model, opt, batch, loss_fn, steps), (time.process_time() - started) / steps


def _module_at(revision: str, name: str, folder: Path) -> ModuleType:
    source = subprocess.run(
        ["git", "show", f"{revision}:python-shim/noisescope/{name}.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"noisescope.{name}_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _use(version: str, before: dict[str, ModuleType], after: dict[str, ModuleType], row_linear) -> None:
    modules = before if version == "before" else after
    pe.pem, pe.pmore = modules["math"], modules["more"]
    pe._row_linear = row_linear if version == "after" else (lambda module, calls: False)


def bench(name: str, address: str, rounds: int, steps: int, before: dict, after: dict, row_linear, sample: int | float | None = None) -> list[str]:
    make, data, loss_fn = WORKLOADS[name]
    batch = data(torch.Generator().manual_seed(1))
    wall: dict[str, list[float]] = {c: [] for c in ("no hook", *CONFIGS)}
    cpu: dict[str, list[float]] = {c: [] for c in wall}
    terms: dict[str, list[float]] = {c: [] for c in wall}
    faults: dict[str, list[float]] = {c: [] for c in wall}
    for r in range(rounds):
        for label in wall:
            model, opt = fresh(make)
            if label == "no hook":
                step_wall, step_cpu = unhooked(model, opt, batch, loss_fn, steps)
                wall[label].append(step_wall)
                cpu[label].append(step_cpu)
                continue
            source = "accumulation" if label == "norms" else "per-example"
            version, mode = label.split() if label != "norms" else ("after", "inline")
            _use(version, before, after, row_linear)
            chosen = sample if source == "per-example" else None
            with noisescope.watch(model, opt, address=address, every=1, source=source, run=f"ab-{name}-{label}-{r}", per_example_sample=chosen) as ns:
                if ns._meter is not None and ns._meter._per_example is not None:
                    ns._meter._per_example.overlap.enabled = mode == "worker"
                mean_step_time(model, opt, batch, loss_fn, 5)
                started = time.process_time()
                faulted = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                _terms_ns[0] = 0
                wall[label].append(mean_step_time(model, opt, batch, loss_fn, steps))
                ns._meter._per_example.overlap.wait() if ns._meter and ns._meter._per_example else None
                cpu[label].append((time.process_time() - started) / steps)
                terms[label].append(_terms_ns[0] / steps / 1e6)
                faults[label].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faulted) / steps)
    _use("after", before, after, row_linear)
    lines = []
    for title, times in ((name, wall), ("  process CPU (all threads)", cpu)):
        cells = [f"{title:<30} {statistics.median(times['no hook']) * 1e3:>8.2f} ms"]
        for label in CONFIGS:
            ratios = [t / base for t, base in zip(times[label], times["no hook"])]
            cells.append(f"{(statistics.median(ratios) - 1) * 100:>+15.1f}%")
        lines.append(" ".join(cells))
    lines.append(f"{'  terms CPU per step':<30} {'':>11} " + " ".join(f"{statistics.median(terms[c]):>13.2f} ms" for c in CONFIGS))
    lines.append(f"{'  page faults per step':<30} {'':>11} " + " ".join(f"{statistics.median(faults[c]):>16.0f}" for c in CONFIGS))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revision", help="the git revision whose per-example modules are 'before'")
    parser.add_argument("models", nargs="*", help="substrings of the models to run (default: all)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--sample", type=lambda t: float(t) if "." in t else int(t), help="per_example_sample (default: exact)")
    parser.add_argument("--default-malloc", action="store_true", help="glibc's own malloc thresholds (page faults vary a step)")
    args = parser.parse_args()
    malloc = fixed_malloc(args.default_malloc)  # bench_overhead.FIXED_MALLOC: page faults would pass for the change's cost
    logging.getLogger("noisescope").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        math_before = _module_at(args.revision, "_per_example_math", Path(folder))
        more_before = _module_at(args.revision, "_per_example_more", Path(folder))
        more_before.pem = math_before  # type: ignore[attr-defined]  # it imported the working tree's
        before = {"math": math_before, "more": more_before}
        after = {"math": pe.pem, "more": pe.pmore}
        row_linear = pe._row_linear
        _count_terms()
        sidecar = QuietSidecar()
        try:
            print(f"per-example overhead, {args.revision} vs working tree, one process, interleaved; sample {args.sample}; torch {torch.__version__}, 1 thread; {malloc}")
            print(f"{'model':<30} {'no hook':>11} " + " ".join(f"{c:>16}" for c in CONFIGS))
            for name in WORKLOADS:
                if not args.models or any(m in name for m in args.models):
                    print("\n".join(bench(name, sidecar.address, args.rounds, args.steps, before, after, row_linear, args.sample)), flush=True)
        finally:
            sidecar.stop()


if __name__ == "__main__":
    main()
