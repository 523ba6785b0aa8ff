"""Benchmark: overhead per optimizer step of the per-example source, and of source="auto", on CPU.

Run: .venv/bin/python test/python/bench_per_example_overhead.py [--quick] [--terms | --wait] [--default-malloc] [model substring ...]

For an MLP, a small CNN and a small transformer block (hand-written attention, so every
parameter is covered), each configuration trains the same model, torch on one thread, the
real sidecar in its own process. One micro-batch per step: no hook; source="accumulation"
every=1 (the norms alone, for reference); source="per-example" at every=10 and every=1, and at every=1
with the per-example terms computed inline in the backward ("inline"; by default they go to a worker
thread beside the backward when torch's threads leave a core free, as here: torch on 1 of 2 cores).
The same batch as 4 micro-batches of accumulation ("×4"): no hook; the norms alone; "auto"
every=1 (which should cost what the norms do: it skips the per-example work on steps that
accumulate); "per-example" every=1. "s=B/4": per_example_sample=0.25, the per-example terms of a quarter of
each micro-batch drawn by importance (reweighted: unbiased), at every=10, every=1 and every=1 inline. "auto": watch()'s
default per_example_sample, exact until the terms cost more than its budget, then sampled, and at its floor (s = 4)
thinned to 1 measured step in k (after a warm-up long enough for its budget to settle; a fourth line says where it
settled: s, and "1/k" when thinned); "auto inline each": the same without thinning (every step measured, as "auto" was
before it thinned); the other per-example columns pass per_example_sample=None (exact) or 0.25.
--terms: instead, only the CPU seconds per step spent on per-example work (drawing the sample, selecting its rows,
the terms), inline on the training thread, exact against s=B/4 and s=1 — the steadiest figure on a shared machine.
--wait: instead, the ms a step the training thread sits idle in the step-end wait for the worker (every=1), exact and
s=B/4: what the worker's layers still cost the step after the training thread ran the queued ones it could.
Runs under fixed glibc malloc thresholds (bench_overhead.FIXED_MALLOC; --default-malloc: glibc's own), so that a step's
page faults, which swing by thousands with allocation order, do not pass for the hook's cost; a third line gives the
process's minor page faults per step. Rounds interleave the configurations; a configuration's
figure in a round is its mean step time, and the table gives the median over rounds of its
ratio to "no hook" with the same micro-batches in the same round; a second line gives the same ratios
of process CPU time (every thread of the training process).
"""
from __future__ import annotations

import argparse
import collections
import functools
import logging
import os
import resource
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import noisescope
from bench_overhead import QuietSidecar, fixed_malloc

# label → (source or None for no hook, every, micro-batches per step, per-example worker: None auto / False inline,
# per_example_sample: None exact, "auto" watch()'s default, "auto, every step" it without thinning: Budget.MAX_STRIDE 1)
CONFIGS: dict[str, tuple[str | None, int, int, bool | None, float | str | None]] = {
    "no hook": (None, 1, 1, None, None),
    "norms every=1": ("accumulation", 1, 1, None, None),
    "per-ex every=10": ("per-example", 10, 1, None, None),
    "per-ex every=1": ("per-example", 1, 1, None, None),
    "per-ex=1 inline": ("per-example", 1, 1, False, None),
    "s=B/4 every=10": ("per-example", 10, 1, None, 0.25),
    "s=B/4 every=1": ("per-example", 1, 1, None, 0.25),
    "s=B/4 =1 inline": ("per-example", 1, 1, False, 0.25),
    "auto every=10": ("per-example", 10, 1, None, "auto"),
    "auto every=1": ("per-example", 1, 1, None, "auto"),
    "auto =1 inline": ("per-example", 1, 1, False, "auto"),
    "auto inline each": ("per-example", 1, 1, False, "auto, every step"),
    "no hook ×4": (None, 1, 4, None, None),
    "×4 norms": ("accumulation", 1, 4, None, None),
    "×4 auto": ("auto", 1, 4, None, None),
    "×4 per-ex": ("per-example", 1, 4, None, None),
}


class Block(nn.Module):
    """Embedding → pre-norm attention (q/k/v Linear, SDPA) → pre-norm MLP → vocabulary head."""

    def __init__(self, vocab: int = 1000, width: int = 128, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, width)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        b, t, w = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        h = h + self.out(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, w))
        h = h + self.mlp(self.norm2(h))
        return self.head(h)


def mlp(width: int = 512) -> nn.Module:
    return nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


Batch = tuple[torch.Tensor, torch.Tensor]
WORKLOADS: dict[str, tuple[Callable[[], nn.Module], Callable[[torch.Generator], Batch], Callable]] = {
    "MLP 784-512-512-10 (b=64)": (
        mlp, lambda g: (torch.randn(64, 784, generator=g), torch.randint(0, 10, (64,), generator=g)), F.cross_entropy
    ),
    # Larger: the hook's fixed per-step Python and gRPC cost (~0.5 ms) is most of the small MLP's overhead.
    "MLP 784-1024-1024-10 (b=128)": (
        lambda: mlp(1024),
        lambda g: (torch.randn(128, 784, generator=g), torch.randint(0, 10, (128,), generator=g)),
        F.cross_entropy,
    ),
    "CNN 3 conv, 32x32 (b=32)": (
        cnn, lambda g: (torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)), F.cross_entropy
    ),
    "transformer block T=64 (b=16)": (
        Block,
        lambda g: (torch.randint(0, 1000, (16, 64), generator=g), torch.randint(0, 1000, (16, 64), generator=g)),
        lambda out, y: F.cross_entropy(out.flatten(0, 1), y.flatten()),
    ),
}


def mean_step_time(
    model: nn.Module, opt: torch.optim.Optimizer, batch: Batch, loss_fn: Callable, steps: int, k: int = 1
) -> float:
    """The batch as `k` micro-batches of gradient accumulation per optimizer step."""
    micro = list(zip(batch[0].chunk(k), batch[1].chunk(k)))
    started = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        for x, y in micro:
            (loss_fn(model(x), y) / k).backward()
        opt.step()
    return (time.perf_counter() - started) / steps


def bench(name: str, address: str, rounds: int, steps: int) -> str:
    make, data, loss_fn = WORKLOADS[name]
    batch = data(torch.Generator().manual_seed(1))
    means: dict[str, list[float]] = {label: [] for label in CONFIGS}
    cpu: dict[str, list[float]] = {label: [] for label in CONFIGS}  # process CPU per step: every thread's work
    faults: dict[str, list[float]] = {label: [] for label in CONFIGS}  # the process's minor page faults per step
    settled: dict[str, list[str]] = {label: [] for label, c in CONFIGS.items() if str(c[4]).startswith("auto")}
    for r in range(rounds):
        for label, (source, every, k, overlap, sample) in CONFIGS.items():
            _settle()
            torch.manual_seed(0)
            model = make()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            if source is None:
                mean_step_time(model, opt, batch, loss_fn, 10, k)  # warm-up
                started, faulted = time.process_time(), _minor_faults()
                means[label].append(mean_step_time(model, opt, batch, loss_fn, steps, k))
                cpu[label].append((time.process_time() - started) / steps)
                faults[label].append((_minor_faults() - faulted) / steps)
                continue
            run = f"bench-{name}-{label}-{r}"
            auto = isinstance(sample, str)
            with noisescope.watch(
                model, opt, address=address, every=every, source=source, run=run, per_example_sample="auto" if auto else sample
            ) as ns:
                per_example = ns._meter._per_example if ns._meter is not None else None
                if per_example is not None:
                    per_example.overlap.enabled = overlap
                    if sample == "auto, every step":
                        per_example.budget.MAX_STRIDE = 1
                # Warm-up, connected, one measured step in it; "auto" until its budget has settled (a decision needs
                # 7 measured steps, each change 4 more; thinned, 4 more measured steps are 4k steps).
                mean_step_time(model, opt, batch, loss_fn, 10 if not auto else 10 + 40 * every, k)
                started, faulted = time.process_time(), _minor_faults()
                means[label].append(mean_step_time(model, opt, batch, loss_fn, steps, k))
                cpu[label].append((time.process_time() - started) / steps)
                faults[label].append((_minor_faults() - faulted) / steps)
                if auto and per_example is not None and per_example.budget is not None:
                    budget = per_example.budget
                    settled[label].append(f"s={budget.size or 'exact'}" + (f" 1/{budget.stride}" if budget.stride > 1 else ""))
    # Wall time is what training feels; process CPU (training, sender, gRPC and per-example worker threads) is the
    # hook's whole cost, steadier on a loaded machine, and an upper bound on the wall overhead when no core is free.
    fault_cells = [f"{'  page faults per step':<30} " + " ".join(f"{statistics.median(faults[label]):>11.0f}" for label in
                   (_no_hook(1), _no_hook(4)))] + [f"{statistics.median(faults[label]):>16.0f}" for label, c in CONFIGS.items() if c[0]]
    where = ", ".join(f"{label}: {'; '.join(f'{v} ×{n}' for v, n in collections.Counter(states).most_common())}" for label, states in settled.items())
    return _row(name, means) + "\n" + _row("  process CPU (all threads)", cpu) + "\n" + " ".join(fault_cells) + f"\n  auto settled (rounds): {where}"


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


_SIDECAR_PID: int | None = None


def _settle(quiet_s: float = 0.1, most_s: float = 5.0) -> None:
    """Until the sidecar has used no CPU for `quiet_s` (at most `most_s`): the configuration before this one leaves it
    decoding a backlog, and a configuration measured meanwhile paid for it — "no hook" first in each round most, so every
    ratio of that round with it (the CNN's no-hook step read 22–33 ms between runs; ×4's, measured later, 21–22 ms)."""
    if _SIDECAR_PID is None:
        return
    stat = f"/proc/{_SIDECAR_PID}/stat"

    def ticks() -> int:
        with open(stat) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    deadline = time.monotonic() + most_s
    last = ticks()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = ticks()
        if now == last:
            return
        last = now


def terms_cpu(name: str, address: str, rounds: int, steps: int) -> str:
    """Thread CPU ms per step in the per-example work (inline: the draw, selecting the drawn rows, the terms), per sample
    size; medians over rounds."""

    def instrument(per_example, total: list[float]) -> None:
        per_example.overlap.enabled = False
        for method in ("_dispatch", "_compute_deferred", "_draw"):  # disjoint: selection, terms, the draw
            setattr(per_example, method, _thread_timed(getattr(per_example, method), total))

    spent = _timed_rounds(name, address, rounds, steps, {"exact": None, "s=B/4": 0.25, "s=1": 1}, "terms", instrument)
    cells = [f"{statistics.median(v) * 1e3:>8.2f} ms" for v in spent.values()]
    ratio = statistics.median(spent["s=B/4"]) / statistics.median(spent["exact"])
    return f"{name:<30} " + " ".join(cells) + f" {ratio:>10.2f}"


def wait_idle(name: str, address: str, rounds: int, steps: int) -> str:
    """Per step at every=1 on the worker: ms the training thread sat idle in take()'s wait for the worker (wall less its
    own CPU there: queued work it ran itself is not idle), exact and s=B/4; medians over rounds."""

    def instrument(per_example, total: list[float]) -> None:
        per_example.overlap.enabled = True
        per_example.overlap.wait = _idle_timed(per_example.overlap.wait, total)

    idle = _timed_rounds(name, address, rounds, steps, {"exact": None, "s=B/4": 0.25}, "wait", instrument)
    return f"{name:<30} " + " ".join(f"{statistics.median(v) * 1e3:>8.2f} ms" for v in idle.values())


def _timed_rounds(
    name: str, address: str, rounds: int, steps: int, samples: dict, prefix: str, instrument: Callable
) -> dict[str, list[float]]:
    """Per sample size, per round: seconds per step that `instrument(per_example, total)` makes the per-example source
    add into total[0] (per-example every=1, after 5 warm-up steps)."""
    make, data, loss_fn = WORKLOADS[name]
    batch = data(torch.Generator().manual_seed(1))
    out: dict[str, list[float]] = {label: [] for label in samples}
    for r in range(rounds):
        for label, sample in samples.items():
            torch.manual_seed(0)
            model = make()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            run = f"{prefix}-{name}-{label}-{r}"
            with noisescope.watch(model, opt, address=address, source="per-example", run=run, per_example_sample=sample) as ns:
                total = [0.0]
                instrument(ns._meter._per_example, total)
                mean_step_time(model, opt, batch, loss_fn, 5)  # warm-up
                total[0] = 0.0
                mean_step_time(model, opt, batch, loss_fn, steps)
                out[label].append(total[0] / steps)
    return out


def _idle_timed(method: Callable, total: list[float]) -> Callable:
    def timed():
        wall, cpu = time.perf_counter(), time.thread_time()
        method()
        total[0] += (time.perf_counter() - wall) - (time.thread_time() - cpu)

    return timed


def _thread_timed(method: Callable, total: list[float]) -> Callable:
    def timed(*args):
        started = time.thread_time()
        try:
            return method(*args)
        finally:
            total[0] += time.thread_time() - started

    return timed


def _row(title: str, times: dict[str, list[float]]) -> str:
    """Per hooked configuration: the median over rounds of its ratio to no hook with the same micro-batches."""
    base = {k: statistics.median(times[_no_hook(k)]) for k in (1, 4)}
    cells = [f"{title:<30} {base[1] * 1e3:>8.2f} ms {base[4] * 1e3:>8.2f} ms"]
    for label, (source, _, k, _, _) in CONFIGS.items():
        if source is None:
            continue
        ratios = [hooked / plain for hooked, plain in zip(times[label], times[_no_hook(k)])]
        cells.append(f"{(statistics.median(ratios) - 1) * 100:>+15.1f}%")
    return " ".join(cells)


def _no_hook(k: int) -> str:
    return next(label for label, (source, _, kk, _, _) in CONFIGS.items() if source is None and kk == k)


def _chosen(name: str, wanted: list[str]) -> bool:
    """Whether a workload is asked for: no substrings, or one of them in its name, in any case ("cnn" is the CNN)."""
    return not wanted or any(m.lower() in name.lower() for m in wanted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run, noisier)")
    parser.add_argument("--terms", action="store_true", help="only the per-example terms' CPU per step, exact vs s=B/4")
    parser.add_argument("--wait", action="store_true", help="only the training thread's idle ms a step in the step-end wait (worker)")
    parser.add_argument("--default-malloc", action="store_true", help="glibc's own malloc thresholds (page faults vary a step)")
    parser.add_argument("models", nargs="*", help="substrings of the models to run, any case (default: all)")
    args = parser.parse_args()
    malloc = fixed_malloc(args.default_malloc)
    rounds = 3 if args.quick else 9
    logging.getLogger("noisescope").setLevel(logging.ERROR)  # the source line and one-scale warning, once per watch
    torch.set_num_threads(1)  # one core for training, the other for the sidecar
    load = os.getloadavg()  # other work on the machine skews every ratio: say how much there was
    sidecar = QuietSidecar()
    global _SIDECAR_PID
    _SIDECAR_PID = sidecar.proc.pid if os.path.exists(f"/proc/{sidecar.proc.pid}/stat") else None
    try:
        only = None
        if args.wait:
            title = f"training thread idle in the step-end wait for the worker, ms a step (every=1; median over {rounds} rounds)"
            only = (title, f"{'model':<30} {'exact':>11} {'s=B/4':>11}", functools.partial(wait_idle, steps=40))
        elif args.terms:
            title = f"per-example terms' CPU per step, inline on the training thread (torch {torch.__version__}, 1 thread; median over {rounds} rounds)"
            only = (title, f"{'model':<30} {'exact':>11} {'s=B/4':>11} {'s=1':>11} {'s=B/4 / exact':>10}", functools.partial(terms_cpu, steps=20))
        if only is not None:
            print(only[0])
            print(only[1])
            for name in WORKLOADS:
                if _chosen(name, args.models):
                    print(only[2](name, sidecar.address, rounds=rounds))
            print(f"load average (1/5/15 min) at the start {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}; {malloc}")
            return
        print(
            f"per-example source overhead per optimizer step (one micro-batch per step, or the same batch as ×4 "
            f"micro-batches; torch {torch.__version__}, 1 thread; median over rounds of mean-step-time ratios to "
            "no hook with the same micro-batches)"
        )
        hooked = [label for label, (source, *_) in CONFIGS.items() if source is not None]
        print(f"{'model':<30} {'no hook':>11} {'no hook ×4':>11} " + " ".join(f"{label:>16}" for label in hooked))
        for name in WORKLOADS:
            if _chosen(name, args.models):
                print(bench(name, sidecar.address, rounds=rounds, steps=40))
        print(f"load average (1/5/15 min) at the start {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, at the end "
              f"{'/'.join(f'{v:.2f}' for v in os.getloadavg())}; {malloc}")
    finally:
        sidecar.stop()


if __name__ == "__main__":
    main()
