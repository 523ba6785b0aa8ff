"""End to end: the sidecar's smoothed B_simple against the exact one, on real training.

The demo's training (load_digits, MLP, SGD + momentum + weight decay, gradient
accumulation, clipping) runs through `noisescope.watch` into a real sidecar
(`serve --json`). At every optimizer step, between the last backward pass and
`optimizer.step()`, we compute on un-hooked copies of the model:

- the truth: exact |G|² and tr(Σ) over the whole training set (exact_noise,
  float64), per parameter tensor and in total;
- the replica: the two-scale estimate the sidecar should make from this step's
  own micro-batch gradients (same batches, recomputed in the training's dtype,
  norms summed in float64).

Both are smoothed with the same bias-corrected EMA and beta as the sidecar.
Two checks:

1. pipeline (tight): the sidecar's raw and smoothed values equal the replica's
   (hook scaling, accumulation, clipping order, FPC, EMA, step alignment);
2. accuracy (the issue's target): the sidecar's smoothed B_simple against the
   smoothed truth, median absolute relative error over the second half of
   training ≤ 25% (goal 15%). tr(Σ) and |G|² errors are reported too.

Why the accuracy tolerance is loose and not 5%: each step's estimate rests on
4 × 16 examples while B_simple ≈ 3× the batch, so single-step |G|² is mostly
noise; and an epoch-shuffling DataLoader does not draw uniform batches at the
current parameters: examples not yet seen this epoch have larger gradients
than the ones just trained on, which inflates tr(Σ) by ~6–20% and |G|² by
~13–17% against the whole-set truth (bench_accuracy.py; with `--sampling
subsets`, a fresh uniform batch per step, both are within ±5%). The bias
largely cancels in the ratio, not entirely. The sidecar itself matches the
replica to ~1e-7 (float32).

Measured (this test, seed 0): B_simple 9.5%, tr(Σ) 14.5%, |G|² 5.8%; over
seeds 0–2 and k = 2, 4, 8 at beta 0.99 the worst B_simple error was 14.3%.

Results go to stdout (pytest -s; pytest shows them on failure anyway), and as
JSON to the file named by $NOISESCOPE_ACCURACY_JSON if set.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

from exact_noise import ExactNoise, smooth_ratio, two_scale_estimate

BETA = 0.99  # passed to the sidecar explicitly, so the test does not follow a changing default
STEPS = 500
MICRO_BATCH = 16
ACCUMULATION = 4
SEED = 0
CLIP = 0.5  # tighter than the demo's 1.0 so that clipping binds on some steps (the hook must measure before it)
TOLERANCE = 0.25  # B_simple, median abs relative error, second half
GOAL = 0.15


@dataclass
class Trace:
    """Per optimizer step: truth, replica and what happened."""

    micro_batch: int
    accumulation: int
    dataset_size: int
    exact: list[tuple[float, float]] = field(default_factory=list)  # (|G|², tr(Σ)) over the whole set
    exact_layers: list[dict[str, tuple[float, float]]] = field(default_factory=list)  # the same per parameter tensor
    replica: list[tuple[float, float]] = field(default_factory=list)  # two-scale estimate from this step's batches
    clipped: list[bool] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def run_training(
    *,
    address: Optional[str],
    steps: int = STEPS,
    micro_batch: int = MICRO_BATCH,
    accumulation: int = ACCUMULATION,
    seed: int = SEED,
    lr: Optional[float] = None,
    clip: Optional[float] = None,
    sampling: str = "epoch",
    run: Optional[str] = None,
) -> Trace:
    """Train the demo through the hook (address None: without it) and record truth and replica."""
    from noisescope import demo

    dataset = demo.make_data()
    n = len(dataset)
    model = demo.make_model(seed)
    # Deep copies, made BEFORE watch() hooks the model: the truth in float64, and a copy in the
    # training's dtype for the replica (same ReLU masks as training; see two_scale_estimate).
    reference = ExactNoise(model, *dataset.tensors)
    assert reference.method == "factored"
    replica_ref = ExactNoise(model, *dataset.tensors, dtype=next(model.parameters()).dtype)
    optimizer = demo.make_optimizer(model, lr=demo.LR if lr is None else lr)
    clip = CLIP if clip is None else clip
    trace = Trace(micro_batch, accumulation, n)
    micro: list[tuple[torch.Tensor, torch.Tensor]] = []
    t_exact = 0.0

    def on_micro_batch(step: int, index: int, x: torch.Tensor, y: torch.Tensor) -> None:
        micro.append((x, y))

    def before_step(step: int, m: torch.nn.Module) -> None:
        nonlocal t_exact
        t0 = time.perf_counter()
        truth = reference.compute(m)
        trace.exact.append((truth.grad_sq_norm, truth.trace_sigma))
        trace.exact_layers.append({n: (l.grad_sq_norm, l.trace_sigma) for n, l in truth.layers.items()})
        grads = [replica_ref.batch_gradient(m, x, y) for x, y in micro]
        est = two_scale_estimate(grads, micro_batch, n)
        trace.replica.append((est.grad_sq_norm, est.trace_sigma))
        micro.clear()
        total = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in m.parameters()))
        trace.clipped.append(clip is not None and total > clip)
        t_exact += time.perf_counter() - t0

    handle = None
    if address is not None:
        import noisescope

        # The accumulation source alone: the replica is its estimator (the per-example one has its own test).
        handle = noisescope.watch(model, optimizer, address=address, run=run, dataset_size=n, source="accumulation")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls; the sidecar and the hook's sender need the other core
    t0 = time.perf_counter()
    try:
        history = demo.train(
            model,
            optimizer,
            dataset,
            steps=steps,
            micro_batch=micro_batch,
            accumulation=accumulation,
            clip=clip,
            seed=seed,
            sampling=sampling,
            before_step=before_step,
            on_micro_batch=on_micro_batch,
        )
    finally:
        torch.set_num_threads(threads)
        if handle is not None:
            handle.remove()
    trace.seconds = {"train_total": time.perf_counter() - t0, "reference": t_exact}
    trace.loss = [h["loss"] for h in history]
    return trace


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _rel(a: float, b: float) -> float:
    return abs(a / b - 1) if b != 0 else float("inf")


def compare_layers(trace: Trace, layer_events: list[dict[str, Any]], measured: list[int], beta: float) -> dict[str, dict[str, float]]:
    """Per parameter tensor: median |rel err| over the 2nd half of the sidecar's smoothed layer values."""
    steps = len(trace.exact)
    by_step = {int(e["step"]): {l["name"]: l for l in e["layers"]} for e in layer_events}
    out: dict[str, dict[str, float]] = {}
    for name in trace.exact_layers[0] if trace.exact_layers else []:
        sm = dict(
            zip(
                measured,
                smooth_ratio(
                    [trace.exact_layers[s][name][0] for s in measured],
                    [trace.exact_layers[s][name][1] for s in measured],
                    beta,
                ),
            )
        )
        half = [s for s in measured if s >= steps // 2 and name in by_step.get(s, {})]
        if not half:
            continue
        errs = {}
        for j, k in enumerate(("gradSqNorm", "traceSigma", "bSimple")):
            errs[k] = statistics.median(_rel(_num(by_step[s][name][k]), sm[s][j]) for s in half)
        errs["trueBSimple"] = statistics.median(sm[s][2] for s in half)
        out[name] = errs
    return out


def compare(
    trace: Trace, events: list[dict[str, Any]], beta: float, layer_events: Optional[list[dict[str, Any]]] = None
) -> dict[str, Any]:
    """Errors of the sidecar's step events against truth and replica, both smoothed with `beta`.

    Truth and replica are smoothed over the steps the sidecar measured (those
    with a raw estimate), as the sidecar's own EMA is; missing steps are
    reported separately."""
    steps = len(trace.exact)
    by_step = {int(e["step"]): e for e in events}
    missing = [s for s in range(steps) if s not in by_step]
    measured = [s for s in range(steps) if s in by_step and by_step[s].get("raw")]

    def smoothed(values: list[tuple[float, float]]) -> dict[int, tuple[float, float, float]]:
        sm = smooth_ratio([values[s][0] for s in measured], [values[s][1] for s in measured], beta)
        return dict(zip(measured, sm))

    truth, replica = smoothed(trace.exact), smoothed(trace.replica)
    half = [s for s in measured if s >= steps // 2 and by_step[s].get("smoothed")]
    keys = ("gradSqNorm", "traceSigma", "bSimple")
    sidecar = {s: tuple(_num(by_step[s]["smoothed"].get(k)) for k in keys) for s in half}

    def median_err(ref: dict[int, tuple[float, float, float]], signed: bool = False) -> dict[str, float]:
        def err(s: int, j: int) -> float:
            return sidecar[s][j] / ref[s][j] - 1 if signed else _rel(sidecar[s][j], ref[s][j])

        return {k: statistics.median(err(s, j) for s in half) if half else float("nan") for j, k in enumerate(keys)}

    # Pipeline: per-step raw and smoothed values against the replica (every step, not only the
    # 2nd half). Deviations of |G|² and tr(Σ) are measured in units of what they are computed
    # from, the mean squared norm of a micro-batch gradient y_small = |G|² + tr(Σ)·x_small
    # (tr(Σ) scaled by x_small − x_big): float32 training makes ~1e-6 of that, and in early
    # steps (B_simple ≪ b) the difference y_small − y_big cancels, so plain relative errors
    # of tr(Σ) would measure float32 round-off amplified, not the pipeline.
    inv_n = 1 / trace.dataset_size
    x_small = 1 / trace.micro_batch - inv_n
    x_big = 1 / (trace.micro_batch * trace.accumulation) - inv_n
    raw_dev = {"gradSqNorm": 0.0, "traceSigma": 0.0}
    smooth_dev = {k: 0.0 for k in keys}

    def dev(e: dict[str, Any], g: float, t: float) -> tuple[float, float]:
        unit = abs(g + t * x_small)
        return (
            abs(_num(e["gradSqNorm"]) - g) / unit,
            abs(_num(e["traceSigma"]) - t) * (x_small - x_big) / unit,
        )

    for s in measured:
        e = by_step[s]
        dg, dt = dev(e["raw"], *trace.replica[s])
        raw_dev["gradSqNorm"], raw_dev["traceSigma"] = max(raw_dev["gradSqNorm"], dg), max(raw_dev["traceSigma"], dt)
        if not e.get("smoothed"):
            continue
        dg, dt = dev(e["smoothed"], *replica[s][:2])
        smooth_dev["gradSqNorm"], smooth_dev["traceSigma"] = max(smooth_dev["gradSqNorm"], dg), max(smooth_dev["traceSigma"], dt)
        # B_simple: the sidecar's own ratio of the two checked values (a relative comparison
        # with the replica's ratio is ill-conditioned wherever smoothed |G|² is near 0).
        sgn, stn, sbn = (_num(e["smoothed"][k]) for k in keys)
        if sgn > 0:
            smooth_dev["bSimple"] = max(smooth_dev["bSimple"], _rel(sbn, stn / sgn))

    # What the estimator itself achieves with these batches (replica vs truth), and the signed bias.
    def median_between(a: dict, b: dict, j: int, signed: bool = False) -> float:
        vals = [(a[s][j] / b[s][j] - 1) for s in half]
        return statistics.median(vals if signed else [abs(v) for v in vals]) if vals else float("nan")

    true_b = [truth[s][2] for s in half] or [float("nan")]
    return {
        "beta": beta,
        "steps": steps,
        "steps_reported": len(by_step),
        "steps_measured": len(measured),
        "missing_steps": missing[:20],
        "compared_steps": len(half),
        "vs_truth": median_err(truth),
        "vs_truth_signed": median_err(truth, signed=True),
        "replica_vs_truth": {k: median_between(replica, truth, j) for j, k in enumerate(keys)},
        "replica_vs_truth_signed": {k: median_between(replica, truth, j, True) for j, k in enumerate(keys)},
        "pipeline_max_dev": {"raw": raw_dev, "smoothed": smooth_dev},
        "truth_b_simple_second_half": {"median": statistics.median(true_b), "min": min(true_b), "max": max(true_b)},
        "global_batch": trace.micro_batch * trace.accumulation,
        "clipped_steps": sum(trace.clipped),
        "seconds": trace.seconds,
        "layers": compare_layers(trace, layer_events, measured, beta) if layer_events else {},
    }


def step_events(sidecar: Any, run: str, steps: int, timeout: float = 30) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Wait until the sidecar printed the last step of `run`; return its step and layers events."""
    for kind in ("step", "layers"):
        sidecar.wait_for(lambda e: e["type"] == kind and e.get("run") == run and e.get("step") == steps - 1, timeout=timeout)
    return (
        [e for e in sidecar.of_type("step") if e.get("run") == run],
        [e for e in sidecar.of_type("layers") if e.get("run") == run],
    )


def format_report(r: dict[str, Any]) -> str:
    v, rv, sg, pd = r["vs_truth"], r["replica_vs_truth"], r["vs_truth_signed"], r["pipeline_max_dev"]
    t = r["truth_b_simple_second_half"]
    return "\n".join(
        [
            f"accuracy e2e: beta {r['beta']}, {r['steps']} steps of {r['global_batch']} "
            f"({r['compared_steps']} compared), clipped on {r['clipped_steps']} steps; "
            f"true B_simple (smoothed, 2nd half) median {t['median']:.0f} [{t['min']:.0f}, {t['max']:.0f}]",
            "  median |rel err| 2nd half      |G|²     tr(Σ)   B_simple",
            f"  sidecar vs truth            {v['gradSqNorm']:7.1%}  {v['traceSigma']:7.1%}  {v['bSimple']:7.1%}",
            f"  replica vs truth            {rv['gradSqNorm']:7.1%}  {rv['traceSigma']:7.1%}  {rv['bSimple']:7.1%}",
            f"  sidecar vs truth, signed    {sg['gradSqNorm']:+7.1%}  {sg['traceSigma']:+7.1%}  {sg['bSimple']:+7.1%}",
            f"  sidecar vs replica, max dev (units of |g_micro|²; B_simple vs its tr(Σ)/|G|²): raw |G|² {pd['raw']['gradSqNorm']:.1e}, "
            f"tr(Σ) {pd['raw']['traceSigma']:.1e}; smoothed |G|² {pd['smoothed']['gradSqNorm']:.1e}, "
            f"tr(Σ) {pd['smoothed']['traceSigma']:.1e}, B_simple {pd['smoothed']['bSimple']:.1e}",
            f"  time: training+hook {r['seconds']['train_total']:.1f}s, of which reference {r['seconds']['reference']:.1f}s",
        ]
        + (
            ["  per parameter tensor (smoothed, 2nd half): |G|²    tr(Σ)   B_simple   true B_simple"]
            + [
                f"    {name:<28s}  {e['gradSqNorm']:7.1%}  {e['traceSigma']:7.1%}  {e['bSimple']:7.1%}  {e['trueBSimple']:9.0f}"
                for name, e in r["layers"].items()
            ]
            if r.get("layers")
            else []
        )
    )


@pytest.fixture
def beta_sidecar():
    """The conftest sidecar with an explicit --beta."""
    from conftest import Sidecar

    s = Sidecar("--beta", str(BETA))
    try:
        yield s
    finally:
        s.stop()


def test_smoothed_b_simple_matches_exact_noise_scale(beta_sidecar):
    run = "accuracy-e2e"
    trace = run_training(address=beta_sidecar.address, run=run)
    events, layer_events = step_events(beta_sidecar, run, STEPS)
    report = compare(trace, events, BETA, layer_events)
    print("\n" + format_report(report))
    if os.environ.get("NOISESCOPE_ACCURACY_JSON"):
        Path(os.environ["NOISESCOPE_ACCURACY_JSON"]).write_text(json.dumps(report, indent=2))

    assert_complete_and_accurate(
        report, events, steps=STEPS, source="accumulation", global_batch=MICRO_BATCH * ACCUMULATION, micro_batches=ACCUMULATION
    )


def test_demo_module_trains_through_the_sidecar(sidecar):
    """`python -m noisescope.demo --address A` (what `npm run demo` runs) end to end, briefly."""
    import subprocess
    import sys

    steps = 30
    proc = subprocess.run(
        [sys.executable, "-m", "noisescope.demo", "--address", sidecar.address, "--steps", str(steps), "--step-time", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "done: full-set loss" in proc.stdout and "train accuracy" in proc.stdout, proc.stdout
    last = sidecar.wait_for(lambda e: e["type"] == "step" and e.get("step") == steps - 1, timeout=30)
    # 4 micro-batches per step: auto's second scale is the accumulation, with no per-example work.
    assert last["source"] == "accumulation" and last["microBatches"] == 4 and last["globalBatch"] == 64
    assert last["smoothed"] and last["smoothed"]["bSimple"] is not None and last["smoothed"]["bSimple"] > 0


def assert_complete_and_accurate(
    report: dict, events: list, *, steps: int, source: str, global_batch: int, micro_batches: int
) -> None:
    """Every step measured in `source` at the right batch, the pipeline equal to its float64 replica, B_simple near the truth."""
    assert not report["missing_steps"], f"steps without an event: {report['missing_steps']}"
    assert report["steps_measured"] == steps, f"every step should have an estimate from the {source} source"
    last = next(e for e in events if e["step"] == steps - 1)
    assert last["source"] == source
    assert last["globalBatch"] == global_batch and last["microBatches"] == micro_batches
    assert report["clipped_steps"] > 0, "the run should exercise clipping (hook must measure before it)"

    # 1. Pipeline: the sidecar computes what the estimator defines (float32 training vs float64 replica).
    pd = report["pipeline_max_dev"]
    # Measured ~1e-7 (float32 norms); a missing FPC would be ~1e-2, a wrong micro-batch scale O(1).
    assert max(pd["raw"].values()) < 1e-5, pd
    assert max(pd["smoothed"].values()) < 1e-5, pd

    # 2. Accuracy against the whole-set truth.
    err = report["vs_truth"]
    assert err["bSimple"] <= TOLERANCE, f"B_simple median error {err['bSimple']:.1%} > {TOLERANCE:.0%}"
    if err["bSimple"] > GOAL:
        print(f"note: B_simple error {err['bSimple']:.1%} is within tolerance but above the {GOAL:.0%} goal")
