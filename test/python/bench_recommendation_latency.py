"""Benchmark: step end → the Python on_recommendation callback, through the real sidecar.

Run: .venv/bin/python test/python/bench_recommendation_latency.py [--runs 5] [--steps 300] [--step-time 0.02]

The delay of one recommendation is the callback's wall clock minus the step end of the step
it was made from (the hook's StepEnd.unix_ms: when that step's optimizer.step() began, taken
from the sender's private tap). It splits into step end → made (the sidecar's
Recommendation.unix_ms) and made → callback (delivery over Attach to the Python thread).

Samples: advice must change often. The demo trains (load_digits MLP) at a fixed batch of
4 × 32 = 128, near its noise scale, with the sidecar at `--window 1 --beta 0.95`: with a fine
granularity (4) and a less smoothed estimate the recommended batch moves every few steps (a
new Recommendation each time); the batch is never applied. Steps are paced (--step-time) as
real training steps are; every run is a new run on the same sidecar.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import noisescope  # noqa: E402
from conftest import Sidecar  # noqa: E402
from noisescope import demo  # noqa: E402

MICRO, ACCUMULATION = 4, 32
SIDECAR_ARGS = ("--window", "1", "--beta", "0.95")
GOAL_P99_MS = 100.0


def one_run(sidecar: Sidecar, dataset, run: str, seed: int, steps: int, step_time: float) -> list[tuple[float, float]]:
    """(step end → made, step end → callback) in ms for each recommendation of one run."""
    model = demo.make_model(seed)
    optimizer = demo.make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=sidecar.address, run=run, dataset_size=len(dataset))
    step_end: dict[int, float] = {}
    ns._sender.tap = lambda record: step_end.__setitem__(record.step, record.unix_ms)
    arrived: list[tuple[noisescope.Recommendation, float]] = []
    ns.on_recommendation(lambda r: arrived.append((r, time.time() * 1000.0)))
    demo.train(model, optimizer, dataset, steps=steps, micro_batch=MICRO, accumulation=ACCUMULATION, seed=seed,
               step_time=step_time)
    made = lambda: sum(1 for e in sidecar.of_type("recommendation") if e["run"] == run)  # noqa: E731
    deadline = time.monotonic() + 5
    while len(arrived) < made() and time.monotonic() < deadline:
        time.sleep(0.01)
    ns.remove()
    if len(arrived) != made():
        raise SystemExit(f"run {run}: the sidecar made {made()} recommendations, the callback got {len(arrived)}")
    return [(r.unix_ms - step_end[r.step], at - step_end[r.step]) for r, at in arrived]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    p.add_argument("--step-time", type=float, default=0.02, help="seconds per optimizer step at least (pacing)")
    args = p.parse_args()
    torch.set_num_threads(1)  # tiny matmuls; the sidecar and the hook's threads need the other core
    dataset = demo.make_data()
    sidecar = Sidecar(*SIDECAR_ARGS)
    samples: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    try:
        for seed in range(args.runs):
            samples += one_run(sidecar, dataset, f"latency-{seed}", seed, args.steps, args.step_time)
    finally:
        sidecar.stop()
    if not samples:
        raise SystemExit("no recommendations were made")
    made = [m for m, _ in samples]
    total = [c for _, c in samples]
    delivery = [c - m for m, c in samples]
    print(
        f"step end → on_recommendation callback: {len(samples)} recommendations from {args.runs} runs × {args.steps} "
        f"steps (batch {MICRO} × {ACCUMULATION}, paced to {args.step_time * 1000:.0f} ms/step; sidecar "
        f"{' '.join(SIDECAR_ARGS)}), {time.perf_counter() - t0:.0f} s"
    )
    print("                         p50 ms   p90 ms   p99 ms   max ms")
    for name, values in (("step end → made", made), ("made → callback", delivery), ("step end → callback", total)):
        print(
            f"  {name:21s} {quantile(values, 0.5):7.2f}  {quantile(values, 0.9):7.2f}  {quantile(values, 0.99):7.2f}"
            f"  {max(values):7.2f}"
        )
    p99 = quantile(total, 0.99)
    print(f"goal p99 < {GOAL_P99_MS:.0f} ms: {'met' if p99 < GOAL_P99_MS else 'NOT met'} ({p99:.1f} ms)")
    print(f"(mean {statistics.fmean(total):.2f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
