"""Benchmark: the hook's overhead per optimizer step while it has no working sidecar (norms mode, every=1).

Run: .venv/bin/python test/python/bench_disconnected.py [--quick] [--before]

Four configurations of the same training (bench_overhead.py's models and loop) in interleaved
rounds: no hook; the hook connected to a sidecar; the hook with no sidecar at its address (it
retries with back-off and drops every step); the hook attached to a sidecar that then stops
reading (SIGSTOP: a stalled reader; its queues fill, then it drops). Each figure is the median
over rounds of the configuration's mean step time divided by "no hook" in the same round; beside
it the same ratio of the process's CPU time (all its threads: the hook's sender included), which
other load on the machine disturbs less.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import statistics
import time

import torch

import noisescope
from bench_overhead import QuietSidecar, make, mean_step_time

CONFIGS = ("no hook", "connected", "no sidecar", "stalled sidecar")
# --before: also no sidecar with every step measured anyway (the hook before it stopped measuring during outages).
MEASURING = "no sidecar, measuring"


def free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def wait_connected(ns: noisescope.Watch, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not ns.stats.connected:
        if time.monotonic() > deadline:
            raise RuntimeError("the hook did not connect to the benchmark's sidecar")
        time.sleep(0.01)


def bench(name: str, width: int, depth: int, micro: int, inputs: int, rounds: int, steps: int, before: bool = False) -> str:
    configs = (*CONFIGS, *((MEASURING,) if before else ()))
    means: dict[str, list[float]] = {label: [] for label in configs}
    cpu: dict[str, list[float]] = {label: [] for label in configs}

    def timed(label: str, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        mean_step_time(model, opt, micro, inputs, 10)  # warm-up
        started = time.process_time()  # every thread of this process: training and the hook's
        means[label].append(mean_step_time(model, opt, micro, inputs, steps))
        cpu[label].append((time.process_time() - started) / steps)

    dropped: dict[str, int] = {label: 0 for label in configs}
    live, stalled = QuietSidecar(), QuietSidecar()
    try:
        for r in range(rounds):
            for label in configs:
                model, opt = make(width, depth, inputs)
                if label == "no hook":
                    timed(label, model, opt)
                    continue
                address = {"connected": live.address, "stalled sidecar": stalled.address}.get(label) or free_address()
                ns = noisescope.watch(model, opt, address=address, run=f"bench-disconnected-{label}-{r}".replace(" ", "-").replace(",", ""))
                if label == MEASURING:
                    ns._meter._wanted = None  # private: measure every step whether or not anyone listens
                try:
                    if label in ("connected", "stalled sidecar"):
                        wait_connected(ns)
                    if label == "stalled sidecar":
                        os.kill(stalled.proc.pid, signal.SIGSTOP)
                    timed(label, model, opt)
                    dropped[label] += ns.stats.dropped
                finally:
                    ns.remove(timeout=0.5)
                    if label == "stalled sidecar":
                        os.kill(stalled.proc.pid, signal.SIGCONT)
    finally:
        live.stop()
        stalled.stop()
    base = statistics.median(means["no hook"])
    cells = [f"{name:<26} {base * 1e3:>9.2f} ms"]
    for label in configs[1:]:
        wall = statistics.median(m / plain for m, plain in zip(means[label], means["no hook"]))
        process = statistics.median(c / plain for c, plain in zip(cpu[label], cpu["no hook"]))
        cells.append(f"{f'{(wall - 1) * 100:+.1f}% ({(process - 1) * 100:+.1f}%)':>18}")
    cells.append(f"   dropped: no sidecar {dropped['no sidecar']}, stalled {dropped['stalled sidecar']} of {rounds * (steps + 10)} steps each")
    return " ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run, noisier)")
    parser.add_argument("--before", action="store_true", help=f"also '{MEASURING}': no sidecar, every step measured anyway")
    args = parser.parse_args()
    scale = 3 if args.quick else 1
    torch.set_num_threads(1)  # one core for training, the other for the sidecar
    logging.getLogger("noisescope").setLevel(logging.ERROR)  # one outage warning per watch() is expected here
    print(f"hook overhead per optimizer step without a working sidecar (norms mode, every=1, torch {torch.__version__}, 1 thread)")
    print("wall time per step vs no hook (process CPU per step vs no hook, all of the process's threads)")
    labels = (*CONFIGS[1:], *((MEASURING,) if args.before else ()))
    print(f"{'model':<26} {'no hook':>12} " + " ".join(f"{label:>18}" for label in labels))
    print(bench("MLP 64-128-128-10 (b=16)", 128, 2, 16, 64, rounds=15 // scale, steps=200, before=args.before))
    print(bench("MLP 512x4 (b=64)", 512, 4, 64, 512, rounds=9 // scale, steps=30, before=args.before))


if __name__ == "__main__":
    main()
