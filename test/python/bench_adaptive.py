"""Benchmark: optimizer steps and examples to a target training loss, adaptive batch vs fixed ones.

Run: .venv/bin/python test/python/bench_adaptive.py [--seeds 5] [--target 0.15] [--step-time 0.01]

The demo's training (load_digits MLP, SGD lr 0.05 momentum 0.9, weight decay, clipping) with a
micro-batch of 16, in four ways, each seed alike (same initial weights, same shuffling):
  fixed small   16 × 2 = 32 every step
  fixed large   16 × 32 = 512 every step
  adaptive      from 16 × 2, following the real sidecar's advice through ns.adaptive_accumulation
  adaptive+lr   the same with apply_lr_hint=True (linear learning-rate scaling for SGD)
After every optimizer step the full-dataset loss is evaluated; a run ends when it reaches the
target. Steps are paced (--step-time) so the sidecar's advice arrives a realistic number of
steps after the step it was made from. Goal: adaptive needs fewer steps than the fixed small
batch and fewer examples than the fixed large one.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import noisescope  # noqa: E402
from conftest import Sidecar  # noqa: E402
from noisescope import demo  # noqa: E402

MICRO = 16
MAX_STEPS = 1000
CONFIGS = ("fixed small", "fixed large", "adaptive", "adaptive+lr")


@dataclass
class Outcome:
    steps: int | None  # optimizer steps to the target; None: not reached within MAX_STEPS
    examples: int
    final_batch: int
    path: str  # the adaptive run's batch changes


def run(config: str, seed: int, target: float, sidecar: Sidecar, dataset, step_time: float) -> Outcome:
    model = demo.make_model(seed)
    optimizer = demo.make_optimizer(model)
    ns = acc = None
    accumulation = {"fixed small": 2, "fixed large": 32}.get(config, 2)
    if config.startswith("adaptive"):
        ns = noisescope.watch(model, optimizer, address=sidecar.address, run=f"{config}-{seed}", dataset_size=len(dataset))
        acc = ns.adaptive_accumulation(steps=2, micro_batch=MICRO, apply_lr_hint=config == "adaptive+lr")
    examples = 0
    reached: int | None = None

    def count(step: int, index: int, x: torch.Tensor, y: torch.Tensor) -> None:
        nonlocal examples
        examples += x.shape[0]

    def at_target(step: int, m: torch.nn.Module) -> bool:
        nonlocal reached
        if demo.evaluate(m, dataset)[0] <= target:
            reached = step + 1
        return reached is not None

    try:
        demo.train(model, optimizer, dataset, steps=MAX_STEPS, micro_batch=MICRO, accumulation=accumulation, seed=seed,
                   adaptive=acc, on_micro_batch=count, after_step=at_target, step_time=step_time)
    finally:
        if ns is not None:
            ns.remove()
    path = " → ".join([str(2 * MICRO), *(str(c.global_batch) for c in acc.history)]) if acc is not None else ""
    return Outcome(reached, examples, acc.global_batch if acc is not None else MICRO * accumulation, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--target", type=float, default=0.15, help="full-dataset training loss to reach (default 0.15)")
    p.add_argument("--step-time", type=float, default=0.01, help="seconds per optimizer step at least (pacing)")
    args = p.parse_args()
    torch.set_num_threads(1)  # tiny matmuls; the sidecar and the hook's threads need the other core
    dataset = demo.make_data()
    sidecar = Sidecar()  # the sidecar's default policy: balanced, window 10, at most 2× per change
    results: dict[str, list[Outcome]] = {c: [] for c in CONFIGS}
    t0 = time.perf_counter()
    try:
        for seed in range(args.seeds):
            for config in CONFIGS:
                results[config].append(run(config, seed, args.target, sidecar, dataset, args.step_time))
    finally:
        sidecar.stop()

    print(
        f"load_digits MLP, micro-batch {MICRO}, SGD lr {demo.LR}: optimizer steps / examples to full-set loss ≤ "
        f"{args.target} (evaluated every step), seeds 0–{args.seeds - 1}, {time.perf_counter() - t0:.0f} s"
    )
    print(f"  {'':12s} " + "  ".join(f"seed {s:<13d}" for s in range(args.seeds)) + "  median steps  median examples")
    for config in CONFIGS:
        cells = [f"{o.steps or '—':>5} / {o.examples:<7d}" for o in results[config]]
        steps = [o.steps for o in results[config] if o.steps is not None]
        print(
            f"  {config:12s} " + "  ".join(f"{c:18s}" for c in cells)
            + f"  {statistics.median(steps) if steps else '—':>12}  {statistics.median(o.examples for o in results[config]):>15}"
        )
    for config in ("adaptive", "adaptive+lr"):
        for seed, o in enumerate(results[config]):
            print(f"  {config} seed {seed}: batch {o.path}")
    for config in ("adaptive", "adaptive+lr"):
        fewer_steps = sum(
            a.steps is not None and (s.steps is None or a.steps < s.steps)
            for a, s in zip(results[config], results["fixed small"])
        )
        fewer_examples = sum(
            a.steps is not None and a.examples < l.examples for a, l in zip(results[config], results["fixed large"])
        )
        print(
            f"{config}: fewer steps than the fixed small batch in {fewer_steps}/{args.seeds} seeds, "
            f"fewer examples than the fixed large batch in {fewer_examples}/{args.seeds}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
