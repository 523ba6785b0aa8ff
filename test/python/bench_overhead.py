"""Benchmark: hook overhead per optimizer step (norms mode, or --mode dense), against a real sidecar.

Run: .venv/bin/python test/python/bench_overhead.py [--quick] [--mode dense] [--separate]

Each configuration (no hook, every=10, every=1) trains the same model with gradient
accumulation. Rounds interleave the configurations so machine noise hits them alike; in
each round a configuration's figure is its mean step time (for every=10 the mean carries
the one measured step in ten), and the table gives the median over rounds of the ratio to
"no hook" in the same round. The sidecar runs as its own process (as in real use) with its
output discarded, so nothing in the training process reads it.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import noisescope

ROOT = Path(__file__).resolve().parents[2]
ACCUMULATION = 4
CONFIGS: dict[str, int | None] = {"no hook": None, "every=10": 10, "every=1": 1}
# --separate: the same with each micro-batch's shard and the StepEnd as separate messages (before StepBundle).
SEPARATE: dict[str, int | None] = {"every=10 separate": 10, "every=1 separate": 1}


class QuietSidecar:
    """`noisescope serve --json` on a free port, stdout to /dev/null (the tests' Sidecar parses it)."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            ["node", str(ROOT / "dist" / "src" / "cli.js"), "serve", "--port", str(port), "--json", "--no-log"],
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("the sidecar did not start; run `npm run build` first")
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


# glibc's malloc serves big tensors with mmap and, by its dynamic threshold and heap trimming, hands their pages back
# and faults them in again on a later step; how many a step takes swings with allocation order (the CNN's un-hooked
# step: 19.5 ms at ~1 fault a step, 25-29 ms at 2,500-5,100, in three runs of one script), so any extra allocation
# (a hook's) can move a step by up to half, either way. Fixed thresholds keep the pages: step times measure work.
FIXED_MALLOC = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=1073741824"


def fixed_malloc(default: bool) -> str:
    """Re-executes this script with FIXED_MALLOC unless `default` or GLIBC_TUNABLES is set already; says which."""
    if not default and "GLIBC_TUNABLES" not in os.environ:
        os.environ["GLIBC_TUNABLES"] = FIXED_MALLOC
        os.execv(sys.executable, [sys.executable, *sys.argv])
    tunables = os.environ.get("GLIBC_TUNABLES")
    return f"malloc: GLIBC_TUNABLES={tunables}" if tunables else "malloc: glibc's defaults (dynamic mmap threshold)"


def load_line(start: tuple[float, float, float]) -> str:
    """Other work on the machine skews every ratio: how much there was, at the start and now."""
    return (f"load average (1/5/15 min) at the start {'/'.join(f'{v:.2f}' for v in start)}, at the end "
            f"{'/'.join(f'{v:.2f}' for v in os.getloadavg())}")


def make(width: int, depth: int, inputs: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(inputs, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 10))
    model = nn.Sequential(*layers)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def mean_step_time(model: nn.Module, opt: torch.optim.Optimizer, micro: int, inputs: int, steps: int) -> float:
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(ACCUMULATION, micro, inputs, generator=gen)
    ys = torch.randint(0, 10, (ACCUMULATION, micro), generator=gen)
    loss_fn = nn.CrossEntropyLoss()
    started = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        for j in range(ACCUMULATION):
            (loss_fn(model(xs[j]), ys[j]) / ACCUMULATION).backward()
        opt.step()
    return (time.perf_counter() - started) / steps


def bench(
    name: str, width: int, depth: int, micro: int, inputs: int, address: str, rounds: int, steps: int, mode: str = "norms",
    separate: bool = False,
) -> str:
    assert steps % 10 == 0, "every=10 must measure exactly one step in ten"
    configs = {**CONFIGS, **(SEPARATE if separate else {})}
    means: dict[str, list[float]] = {label: [] for label in configs}
    cpu: dict[str, list[float]] = {label: [] for label in configs}

    def timed(label: str, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        started = time.process_time()  # every thread of this process: training and the hook's sender
        means[label].append(mean_step_time(model, opt, micro, inputs, steps))
        cpu[label].append((time.process_time() - started) / steps)

    for r in range(rounds):
        for label, every in configs.items():
            model, opt = make(width, depth, inputs)
            if every is None:
                mean_step_time(model, opt, micro, inputs, 10)  # warm-up
                timed(label, model, opt)
                continue
            with noisescope.watch(model, opt, address=address, every=every, run=f"bench-{name}-{label}-{r}", mode=mode) as ns:
                ns._sender.bundle_steps = label not in SEPARATE  # private switch
                mean_step_time(model, opt, micro, inputs, 10)  # warm-up, connected, one measured step in it
                timed(label, model, opt)
    params = sum(p.numel() for p in make(width, depth, inputs)[0].parameters())
    base = statistics.median(means["no hook"])
    cells = [f"{name:<26} {params:>10,} {base * 1e3:>9.2f} ms"]
    for label in list(configs)[1:]:
        wall = statistics.median(hooked / plain for hooked, plain in zip(means[label], means["no hook"]))
        process = statistics.median(hooked / plain for hooked, plain in zip(cpu[label], cpu["no hook"]))
        cells.append(f"{f'{(wall - 1) * 100:+.1f}% ({(process - 1) * 100:+.1f}%)':>{max(18, len(label))}}")
    return " ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run, noisier)")
    parser.add_argument("--mode", choices=("norms", "dense"), default="norms", help="the hook's mode (default norms)")
    parser.add_argument("--separate", action="store_true", help="also every=10/every=1 sending separate messages per step (no StepBundle)")
    args = parser.parse_args()
    scale = 3 if args.quick else 1
    torch.set_num_threads(1)  # one core for training, the other for the sidecar
    load = os.getloadavg()  # other work on the machine skews every ratio: say how much there was
    sidecar = QuietSidecar()
    try:
        print(
            f"hook overhead per optimizer step ({args.mode} mode, {ACCUMULATION} micro-batches, "
            f"torch {torch.__version__}, 1 thread; median over rounds of mean-step-time ratios)"
        )
        print("wall time per step vs no hook (process CPU per step vs no hook, all of the process's threads)")
        labels = [*list(CONFIGS)[1:], *(SEPARATE if args.separate else ())]
        print(f"{'model':<26} {'parameters':>10} {'no hook':>12} " + " ".join(f"{label:>{max(18, len(label))}}" for label in labels))
        for name, width, depth, micro, inputs, rounds, steps in (
            ("MLP 64-128-128-10 (b=16)", 128, 2, 16, 64, 15, 200),
            ("MLP 512x4 (b=64)", 512, 4, 64, 512, 9, 30),
            ("MLP 2048x4 (b=128)", 2048, 4, 128, 1024, 6, 10),
        ):
            print(bench(name, width, depth, micro, inputs, sidecar.address, rounds // scale, steps, args.mode, args.separate))
        print(load_line(load))
    finally:
        sidecar.stop()


if __name__ == "__main__":
    main()
