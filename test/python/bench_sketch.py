"""Benchmark: sketch mode beside dense and norms: payload bytes sent per measured step and training overhead.

Run: .venv/bin/python test/python/bench_sketch.py [--quick] [--sketch-size M]

One interleaved run: in each round every configuration (no hook, norms, sketch, dense; every=1, so
every step is measured) trains the same model with 4 micro-batches against one real sidecar in its own
process; a configuration's figure is the median over rounds of its mean step time relative to "no hook"
in the same round. Bytes per step are the gradient payload the hook sends (sq_norms: 8 bytes per layer
and micro-batch; dense: every element in fp32; sketch: min(numel, M) per layer in fp32), framing aside.
"""
from __future__ import annotations

import argparse
import statistics

import torch

import noisescope
from bench_overhead import ACCUMULATION, QuietSidecar, make, mean_step_time

MODES = ("norms", "sketch", "dense")


def payload_bytes(model: torch.nn.Module, mode: str, sketch_size: int) -> int:
    numels = [p.numel() for p in model.parameters()]
    per_micro = {
        "norms": 8 * len(numels),
        "dense": 4 * sum(numels),
        "sketch": 4 * sum(min(n, sketch_size) for n in numels),
    }[mode]
    return ACCUMULATION * per_micro


def human_bytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.2f} kB" if n >= 1e3 else f"{n} B"


def bench(name: str, width: int, depth: int, micro: int, inputs: int, address: str, rounds: int, steps: int, m: int) -> str:
    means: dict[str, list[float]] = {label: [] for label in ("no hook", *MODES)}
    for r in range(rounds):
        for label in means:
            model, opt = make(width, depth, inputs)
            if label == "no hook":
                mean_step_time(model, opt, micro, inputs, 3)  # warm-up
                means[label].append(mean_step_time(model, opt, micro, inputs, steps))
                continue
            with noisescope.watch(model, opt, address=address, run=f"bench-{name}-{label}-{r}", mode=label, sketch_size=m):
                mean_step_time(model, opt, micro, inputs, 3)  # warm-up, connected
                means[label].append(mean_step_time(model, opt, micro, inputs, steps))
    model = make(width, depth, inputs)[0]
    params = sum(p.numel() for p in model.parameters())
    base = statistics.median(means["no hook"])
    cells = [f"{name:<22} {params:>10,} {base * 1e3:>8.1f} ms"]
    for label in MODES:
        ratio = statistics.median(hooked / plain for hooked, plain in zip(means[label], means["no hook"]))
        cells.append(f"{human_bytes(payload_bytes(model, label, m)):>11} {(ratio - 1) * 100:>+7.1f}%")
    return " ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run, noisier)")
    parser.add_argument("--sketch-size", type=int, default=4096, help="sketch mode's m per layer (default 4096)")
    args = parser.parse_args()
    scale = 3 if args.quick else 1
    torch.set_num_threads(1)  # one core for training, the other for the sidecar
    sidecar = QuietSidecar()
    try:
        print(
            f"payload per measured step and training overhead at every=1 ({ACCUMULATION} micro-batches, sketch m={args.sketch_size}, "
            f"torch {torch.__version__}, 1 thread; median over rounds of mean-step-time ratios to no hook)"
        )
        print(f"{'model':<22} {'parameters':>10} {'no hook':>11} " + " ".join(f"{mode + ' bytes, time':>19}" for mode in MODES))
        print(bench("MLP 512x4 (b=64)", 512, 4, 64, 512, sidecar.address, rounds=9 // scale, steps=20, m=args.sketch_size))
        print(bench("MLP 2048x4 (b=128)", 2048, 4, 128, 1024, sidecar.address, rounds=6 // scale, steps=6, m=args.sketch_size))
    finally:
        sidecar.stop()


if __name__ == "__main__":
    main()
