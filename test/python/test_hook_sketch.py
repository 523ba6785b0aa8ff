"""Sketch mode: the hook's CountSketch is unbiased for squared norms and inner products, with variance ∝ 1/m;
end to end on the demo's training the sketched figures agree with dense and norms mode within the sketch's
stated error; training is bitwise unchanged.

Stated error: a layer's sketched inner product ⟨S x, S y⟩ has variance (|x|²|y|² + ⟨x,y⟩² − 2Σ x_i²y_i²)/m, so a
sketched squared norm has a relative standard deviation of at most sqrt(2/m) (a layer of at most m elements is
exact). Measured (load_digits demo, 4 micro-batches of 16, 8 steps, sketch_size=1024: 3338 of 26122 values per
micro-batch, run "sketch"): per-step raw |G|² within 17% of dense (a difference of two noisy norms), raw tr(Σ)
within 2.4%; smoothed B_simple 11% off at step 0 (one step), within 2.8% from step 1 on, 0.5% at step 7.
"""
from __future__ import annotations

import logging
import math

import pytest
import torch

import noisescope
from conftest import Sidecar
from noisescope import demo
from noisescope._sketch import count_sketch, run_seed, step_seed
from test_hook_dense import ACCUMULATION, SEED, STEPS, assert_bitwise_like_unwatched, step_lines, train_watched
from test_hook_support import wait_connected

SKETCH_SIZE = 1024


def synthetic_pair(n: int = 20_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlated vectors with uneven magnitudes (a few large entries, as gradients have)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    x[:50] *= 20.0
    y = 0.5 * x + torch.randn(n, generator=gen, dtype=torch.float64)
    return x, y


def sketched_products(x: torch.Tensor, y: torch.Tensor, m: int, seeds: int) -> torch.Tensor:
    """[seed, (|Sx|², ⟨Sx,Sy⟩)] over `seeds` step seeds, in float64."""
    base = run_seed("unbiased")
    out = torch.empty(seeds, 2, dtype=torch.float64)
    for s in range(seeds):
        seed = step_seed(base, s)
        sx, sy = count_sketch(x.float(), m, seed, 0).double(), count_sketch(y.float(), m, seed, 0).double()
        out[s, 0], out[s, 1] = sx @ sx, sx @ sy
    return out


def countsketch_variance(x: torch.Tensor, y: torch.Tensor, m: int) -> float:
    return float((x @ x) * (y @ y) + (x @ y) ** 2 - 2 * ((x * x) @ (y * y))) / m


def test_sketched_squared_norms_and_inner_products_are_unbiased_over_seeds() -> None:
    x, y = synthetic_pair()
    samples = sketched_products(x, y, 256, 1500)
    for column, exact in ((0, float(x @ x)), (1, float(x @ y))):
        values = samples[:, column]
        standard_error = float(values.std()) / math.sqrt(len(values))
        assert abs(float(values.mean()) - exact) < 4 * standard_error, (column, float(values.mean()), exact, standard_error)
        assert standard_error < 0.01 * abs(exact)  # the check has teeth: a 4% bias would fail it


def test_sketch_variance_shrinks_as_one_over_m_and_matches_countsketch_theory() -> None:
    x, y = synthetic_pair()
    variances = {}
    for m in (64, 256, 1024):
        samples = sketched_products(x, y, m, 600)
        variances[m] = float(samples[:, 1].var())
        # 600 samples: the variance is known to about ±6% (1 SE); 25% is 4 SE.
        assert variances[m] == pytest.approx(countsketch_variance(x, y, m), rel=0.25), m
    assert variances[64] / variances[256] == pytest.approx(4.0, rel=0.3)
    assert variances[256] / variances[1024] == pytest.approx(4.0, rel=0.3)


def test_a_layer_no_larger_than_m_is_sent_exactly() -> None:
    v = torch.randn(100)
    assert torch.equal(count_sketch(v, 100, 12345, 0), v)
    assert torch.equal(count_sketch(v, 128, 12345, 0)[:100], v)


def test_sketch_dense_and_norms_agree_on_the_same_training_within_the_sketch_error(
    sidecar: Sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="noisescope")
    records: list[object] = []
    exact_vs_sketched: list[tuple[float, float, int]] = []

    def train_sketched() -> object:
        data = demo.make_data()
        torch.manual_seed(SEED)
        model = demo.make_model(seed=SEED)
        optimizer = demo.make_optimizer(model)
        ns = noisescope.watch(
            model, optimizer, address=sidecar.address, run="sketch", dataset_size=len(data), mode="sketch",
            sketch_size=SKETCH_SIZE,
        )
        wait_connected(ns)
        # The step's exact micro-batch norms (the meter's) beside its sketches, as the sender thread gets them.
        ns._sender.tap = lambda r: records.append((r.micro_sq_norms, r.dense.rows()))
        def after_step(step: int, _model: torch.nn.Module) -> None:  # a truthy return would stop the training
            sidecar.wait_for(lambda e: e["type"] == "step" and e.get("run") == "sketch" and e["step"] == step)

        demo.train(model, optimizer, data, steps=STEPS, accumulation=ACCUMULATION, seed=SEED, after_step=after_step)
        ns.remove()
        return ns

    sketch_ns = train_sketched()
    assert "mode sketch (CountSketch of at most 1024 buckets per layer" in caplog.text
    train_watched(sidecar, "dense", mode="dense")
    train_watched(sidecar, "norms", mode="norms", source="accumulation")
    sketch, dense, norms = (step_lines(sidecar, run) for run in ("sketch", "dense", "norms"))
    assert (sketch_ns.stats.dropped, sketch_ns.stats.refusals) == (0, 0)
    # Every micro-batch's sketched squared norm per layer against the exact one, in units of the stated error.
    sizes = [1024, 128, 1024, 128, 1024, 10]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    for micro_sq_norms, rows in records:
        for j, row in enumerate(rows):
            for layer, (m, start) in enumerate(zip(sizes, offsets)):
                sketched = float(row[start : start + m].double().square().sum())
                exact_vs_sketched.append((micro_sq_norms[j][layer], sketched, m))
    z = []
    for exact, sketched, m in exact_vs_sketched:
        if m < 1024:  # sent exactly
            assert sketched == pytest.approx(exact, rel=1e-5)
        else:
            z.append((sketched - exact) / (math.sqrt(2 / m) * exact))
    assert len(z) == STEPS * ACCUMULATION * 3
    assert abs(sum(z) / len(z)) < 3 / math.sqrt(len(z))  # unbiased on real gradients
    assert math.sqrt(sum(v * v for v in z) / len(z)) < 1.2  # no larger than stated
    # The sidecar's estimates from the sketches: the smoothed ones close to dense's after 8 steps.
    last_sketch, last_dense, last_norms = sketch[-1]["smoothed"], dense[-1]["smoothed"], norms[-1]["smoothed"]
    stated = 3 * math.sqrt(2 / SKETCH_SIZE)
    for field in ("gradSqNorm", "traceSigma", "bSimple"):
        assert last_norms[field] == pytest.approx(last_dense[field], rel=1e-5)
        assert last_sketch[field] == pytest.approx(last_dense[field], rel=stated), field
    assert all(s["diversity"] and s["microBatches"] == ACCUMULATION for s in sketch)
    started = sidecar.wait_for(lambda e: e["type"] == "run" and e["run"] == "sketch")
    assert started["mode"] == "sketch"
    assert started["sketch"] == {"sizes": sizes, "dtype": "DTYPE_F32"}


def test_training_is_bitwise_unchanged_with_sketch_mode_on(sidecar: Sidecar) -> None:
    watched, ns = train_watched(sidecar, "bitwise", mode="sketch", sketch_size=256)
    assert ns.stats.steps_measured == STEPS
    assert_bitwise_like_unwatched(watched)


def test_sketch_size_is_validated_at_watch(free_address: str) -> None:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"sketch_size must be in 1\.\.262144, got 0"):
        noisescope.watch(model, optimizer, address=free_address, mode="sketch", sketch_size=0)
    with pytest.raises(TypeError, match="sketch_size must be an int, got float"):
        noisescope.watch(model, optimizer, address=free_address, mode="sketch", sketch_size=4.0)
    with pytest.raises(ValueError, match="source='per-example' is a norms-mode source"):
        noisescope.watch(model, optimizer, address=free_address, mode="sketch", source="per-example")


def test_the_device_path_sketches_in_the_hooks_what_the_cpu_path_sketches_on_the_sender_thread() -> None:
    """CUDA sketches in the gradient hooks, CPU copies out and sketches later: both from the same draws (run
    here on the CPU, with the copy-out switched off for the device path)."""
    from noisescope._meter import LayerInfo
    from noisescope._sketch import SketchCapture

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(40, 30)), torch.nn.Parameter(torch.zeros(50)), torch.nn.Parameter(torch.zeros(3000))]
    layers = [LayerInfo(name=f"p{i}", numel=p.numel(), kind="Linear") for i, p in enumerate(params)]
    grads = [[torch.randn_like(p) for p in params] for _ in range(3)]
    rows = []
    for device_path in (False, True):
        capture = SketchCapture(params, layers, run="paths", size=64, dtype="fp32", count_dropped=lambda n: None)
        if device_path:
            capture._copy = None
        capture.begin_step(True)
        for j, micro in enumerate(grads):
            for i, grad in enumerate(micro):
                capture.take(j, i, grad)
        step = capture.close(3, False)
        rows.append(step.rows())
        step.release()
    seed = step.seed
    for j, micro in enumerate(grads):
        torch.testing.assert_close(rows[0][j], rows[1][j], rtol=1e-6, atol=1e-6)
        expected = torch.cat([count_sketch(g.reshape(-1), min(64, g.numel()), seed, i) for i, g in enumerate(micro)])
        torch.testing.assert_close(rows[1][j], expected, rtol=1e-6, atol=1e-6)


def test_the_sketch_bench_runs_and_counts_the_payload_of_each_mode(sidecar: Sidecar) -> None:
    """bench_sketch.py in miniature (one round of two steps on a tiny MLP): its table line and byte counts."""
    from bench_overhead import make
    from bench_sketch import bench, payload_bytes

    line = bench("tiny", 16, 1, 4, 8, sidecar.address, rounds=1, steps=2, m=64)
    model = make(16, 1, 8)[0]
    numels = [p.numel() for p in model.parameters()]  # 128, 16, 160, 10
    assert payload_bytes(model, "dense", 64) == ACCUMULATION * 4 * sum(numels)
    assert payload_bytes(model, "sketch", 64) == ACCUMULATION * 4 * (64 + 16 + 64 + 10)
    assert payload_bytes(model, "norms", 64) == ACCUMULATION * 8 * len(numels)
    assert line.startswith("tiny") and line.count("%") == 3 and "2.46 kB" in line
