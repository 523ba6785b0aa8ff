"""Benchmark: the hook's fixed cost per measured step, by thread, steps sent one per message vs coalesced.

Run: .venv/bin/python test/python/bench_step_cost.py [--quick] [--steps N] [--rounds R]

The 784-512-512-10 MLP at b=64 (one micro-batch per step, torch on 1 thread, the real sidecar in its own
process): its step is short enough (~2.5 ms) that the hook's fixed per-step cost, not the arithmetic, is
its overhead. Configurations, interleaved per round: no hook; norms every=1 and per-example every=10 and
every=1, with the sender as it is (steps coalesced: woken and sent STEPS_PER_MESSAGE at a time or every
FLUSH_S) and with each step woken and sent on its own ("one/msg": the sender before coalescing) or a 50 ms
flush interval. Per configuration:
the median over rounds of the wall-time ratio to no hook, and CPU per step in µs, medians over rounds, of the
training thread (time.thread_time), of the process's other threads (grpcio's, the link thread), and of the
sidecar process (/proc/<pid>/stat, 10 ms ticks: summed over all of a configuration's steps). CPU is the figure to
trust on a shared machine; the load averages are printed.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import noisescope
import noisescope._sender as sender
from bench_overhead import QuietSidecar, load_line

# label → the watch's source (None: no hook) and every, and the sender's private switches: steps per message
# (1: each step woken and sent on its own, as before coalescing) and its flush interval
DEFAULT = {"per_message": sender.STEPS_PER_MESSAGE, "flush": sender.FLUSH_S}
CONFIGS: dict[str, dict[str, Any]] = {
    "no hook": {"source": None, "every": 1},
    "norms=1 one/msg": {"source": "accumulation", "every": 1, "per_message": 1},
    "norms=1 50 ms": {"source": "accumulation", "every": 1, "flush": 0.05},
    "norms=1": {"source": "accumulation", "every": 1},
    "norms=10 one/msg": {"source": "accumulation", "every": 10, "per_message": 1},
    "norms=10": {"source": "accumulation", "every": 10},
    "per-ex=10 one/msg": {"source": "per-example", "every": 10, "per_message": 1},
    "per-ex=10 50 ms": {"source": "per-example", "every": 10, "flush": 0.05},
    "per-ex=10": {"source": "per-example", "every": 10},
    "per-ex=1 one/msg": {"source": "per-example", "every": 1, "per_message": 1},
    "per-ex=1": {"source": "per-example", "every": 1},
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
    parser.add_argument("configs", nargs="*", help="substrings of the configurations to run besides no hook (default: all)")
    args = parser.parse_args()
    chosen = {label: c for label, c in CONFIGS.items() if c["source"] is None or not args.configs or any(s in label for s in args.configs)}
    steps, rounds = (100, 3) if args.quick else (args.steps, args.rounds)
    logging.getLogger("noisescope").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 784, generator=g), torch.randint(0, 10, (64,), generator=g)
    wall: dict[str, list[float]] = {label: [] for label in chosen}
    train: dict[str, list[float]] = {label: [] for label in chosen}
    other: dict[str, list[float]] = {label: [] for label in chosen}
    side: dict[str, float] = {label: 0.0 for label in chosen}
    load = os.getloadavg()
    sidecar = QuietSidecar()
    try:
        for r in range(rounds):
            for label, config in chosen.items():
                config = {**DEFAULT, **config}
                sender.FLUSH_S = config["flush"]  # private switch
                torch.manual_seed(0)
                model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
                opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                ns = None
                if config["source"] is not None:
                    ns = noisescope.watch(
                        model, opt, address=sidecar.address, every=config["every"], source=config["source"], run=f"cost-{label}-{r}"
                    )
                    ns._sender.steps_per_message = config["per_message"]
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
        for label in chosen:
            ratio = statistics.median(h / b for h, b in zip(wall[label], wall["no hook"]))
            print(f"{label:<18} {(ratio - 1) * 100:>+15.1f}% {statistics.median(train[label]) * 1e6:>16.0f} "
                  f"{statistics.median(other[label]) * 1e6:>17.0f} {side[label] / (rounds * steps) * 1e6:>11.0f}")
        print(load_line(load))
    finally:
        sidecar.stop()


if __name__ == "__main__":
    main()
