"""Benchmark: the hook's fixed cost per measured step, by thread, steps sent one per message vs coalesced.

Run: .venv/bin/python test/python/bench_step_cost.py [--quick] [--steps N] [--rounds R]

The 784-512-512-10 MLP at b=64 (one micro-batch per step, torch on 1 thread, the real sidecar in its own
process): its step is short enough (~2.5 ms) that the hook's fixed per-step cost, not the arithmetic, is
its overhead. Configurations, interleaved per round: no hook; norms every=1 with each step woken and sent
on its own ("one/msg": the sender before coalescing, a private switch); norms every=1 coalesced (the
default); per-example every=10 and every=1, coalesced. Per configuration: the median over rounds of the
wall-time ratio to no hook, and CPU per step in µs, medians over rounds, of the training thread
(time.thread_time), of the process's other threads (grpcio's, the link thread), and of the sidecar
process (/proc/<pid>/stat, 10 ms ticks: read over all of a configuration's steps). CPU is the figure to
trust on a shared machine; the load averages are printed.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import noisescope
from bench_overhead import QuietSidecar, load_line

# label → (source or None for no hook, every, steps per message: None the default, 1 one message per step)
CONFIGS: dict[str, tuple[str | None, int, int | None]] = {
    "no hook": (None, 1, None),
    "norms=1 one/msg": ("accumulation", 1, 1),
    "norms=1": ("accumulation", 1, None),
    "per-ex=10": ("per-example", 10, None),
    "per-ex=1 one/msg": ("per-example", 1, 1),
    "per-ex=1": ("per-example", 1, None),
}
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def sidecar_cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime


def run(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 100 steps (a smoke run)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    steps, rounds = (100, 3) if args.quick else (args.steps, args.rounds)
    logging.getLogger("noisescope").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 784, generator=g), torch.randint(0, 10, (64,), generator=g)
    wall: dict[str, list[float]] = {label: [] for label in CONFIGS}
    train: dict[str, list[float]] = {label: [] for label in CONFIGS}
    other: dict[str, list[float]] = {label: [] for label in CONFIGS}
    side: dict[str, float] = {label: 0.0 for label in CONFIGS}
    load = os.getloadavg()
    sidecar = QuietSidecar()
    try:
        for r in range(rounds):
            for label, (source, every, per_message) in CONFIGS.items():
                torch.manual_seed(0)
                model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
                opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                ns = None
                if source is not None:
                    ns = noisescope.watch(model, opt, address=sidecar.address, every=every, source=source, run=f"cost-{label}-{r}")
                    if per_message is not None:
                        ns._sender.steps_per_message = per_message  # private switch
                run(model, opt, x, y, 20)  # warm-up (connected by the end of it)
                time.sleep(0.1)
                t0, p0, w0, s0 = time.thread_time(), time.process_time(), time.perf_counter(), sidecar_cpu_s(sidecar.proc.pid)
                run(model, opt, x, y, steps)
                t1, p1, w1 = time.thread_time(), time.process_time(), time.perf_counter()
                if ns is not None:
                    ns.remove()  # flushes: the sidecar's CPU for these steps is in before the next reading
                    time.sleep(0.05)
                s1 = sidecar_cpu_s(sidecar.proc.pid)
                wall[label].append((w1 - w0) / steps)
                train[label].append((t1 - t0) / steps)
                other[label].append(((p1 - p0) - (t1 - t0)) / steps)
                side[label] += s1 - s0
        base = statistics.median(wall["no hook"])
        print(f"MLP 784-512-512-10 b=64, torch {torch.__version__} on 1 thread, {rounds} rounds × {steps} steps; "
              f"no hook {base * 1e3:.2f} ms/step")
        print(f"{'config':<18} {'wall vs no hook':>16} {'train thread µs':>16} {'other threads µs':>17} {'sidecar µs':>11}")
        for label in CONFIGS:
            ratio = statistics.median(h / b for h, b in zip(wall[label], wall["no hook"]))
            print(f"{label:<18} {(ratio - 1) * 100:>+15.1f}% {statistics.median(train[label]) * 1e6:>16.0f} "
                  f"{statistics.median(other[label]) * 1e6:>17.0f} {side[label] / (rounds * steps) * 1e6:>11.0f}")
        print(load_line(load))
    finally:
        sidecar.stop()


if __name__ == "__main__":
    main()
