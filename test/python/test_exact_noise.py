"""Checks of the ground truth itself (exact_noise.py), without hook or sidecar."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from exact_noise import BiasCorrectedEMA, ExactNoise, smooth_ratio, two_scale_estimate


def _digits():
    from noisescope import demo

    return demo


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls: one thread is faster (and kinder to whatever else runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(one_thread):
    """The demo's data and model, a little trained so gradients are not those of the init."""
    demo = _digits()
    torch.manual_seed(0)
    dataset = demo.make_data()
    model = demo.make_model(0)
    ref = ExactNoise(model, *dataset.tensors)  # a copy of the untrained model: compute() takes params
    opt = demo.make_optimizer(model)
    demo.train(model, opt, dataset, steps=60)
    return dataset, model, ref


def _full_batch_grad(ref: ExactNoise, model: nn.Module, index=None) -> dict[str, torch.Tensor]:
    params = {n: p.requires_grad_(True) for n, p in ref.params_from(model).items()}
    loss = ref.full_batch_loss(params, index)
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


def test_per_example_grads_match_a_plain_loop(setup):
    dataset, model, ref = setup
    idx = torch.tensor([0, 5, 17, 400, 1796])
    vm = ref.per_example_grads(model, idx)
    for j, i in enumerate(idx.tolist()):
        loop = _full_batch_grad(ref, model, slice(i, i + 1))  # batch of one: the example's own gradient
        for name, g in loop.items():
            torch.testing.assert_close(vm[name][j], g, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("method", ["vmap", "factored"])
def test_grad_sq_norm_is_the_full_batch_gradient(setup, method):
    dataset, model, ref = setup
    r = ExactNoise(model, *dataset.tensors, method=method, chunk=500)  # 500: chunks of unequal size merge
    stats = r.compute(model)
    full = _full_batch_grad(ref, model)
    for name, g in full.items():
        assert stats.layers[name].grad_sq_norm == pytest.approx(float(g.pow(2).sum()), rel=1e-10)
    assert stats.grad_sq_norm == pytest.approx(sum(float(g.pow(2).sum()) for g in full.values()), rel=1e-10)
    assert stats.n == len(dataset)


def test_methods_agree_per_layer(setup):
    dataset, model, _ = setup
    a = ExactNoise(model, *dataset.tensors, method="vmap").compute(model)
    b = ExactNoise(model, *dataset.tensors, method="factored").compute(model)
    assert list(a.layers) == list(b.layers) == [n for n, _ in model.named_parameters()]
    for name in a.layers:
        assert b.layers[name].grad_sq_norm == pytest.approx(a.layers[name].grad_sq_norm, rel=1e-9)
        assert b.layers[name].trace_sigma == pytest.approx(a.layers[name].trace_sigma, rel=1e-9)
    assert b.trace_sigma == pytest.approx(sum(l.trace_sigma for l in b.layers.values()), rel=1e-12)
    assert a.b_simple == pytest.approx(b.b_simple, rel=1e-9)


def test_trace_sigma_is_the_unbiased_variance_of_per_example_grads(setup):
    dataset, model, ref = setup
    idx = torch.arange(0, 300)
    sub = ExactNoise(model, *(t[idx] for t in dataset.tensors), method="vmap")
    stats = sub.compute(model)
    g = sub.per_example_grads(model)
    flat = torch.cat([g[n].reshape(len(idx), -1) for n in sub.names], 1)
    expect = float(flat.var(0, unbiased=True).sum())  # Σ_j Var_j with N−1
    assert stats.trace_sigma == pytest.approx(expect, rel=1e-10)


def test_sampling_identity_exact_on_a_small_set(setup):
    """E|g_B|² = |G|² + tr(Σ)(1/B − 1/N) for B drawn without replacement, exactly:
    on 14 examples we can enumerate every batch of B = 2 and of B = 3 (plain autograd per batch)."""
    dataset, model, _ = setup
    n = 14
    x, y = (t[:n] for t in dataset.tensors)
    small = ExactNoise(model, x, y, method="vmap")
    stats = small.compute(model)
    for b in (2, 3):
        sq = []
        for batch in itertools.combinations(range(n), b):
            g = small.batch_gradient(model, x[list(batch)], y[list(batch)])
            sq.append(sum(float(v.pow(2).sum()) for v in g.values()))
        mean = sum(sq) / len(sq)
        assert mean == pytest.approx(stats.grad_sq_norm + stats.trace_sigma * (1 / b - 1 / n), rel=1e-9)


def test_sampling_identity_monte_carlo_on_the_whole_set(setup):
    """The same identity on all 1797 examples by Monte Carlo (B = 64, 1500 batches).

    Loose by necessity: |g_B|² is a noisy, skewed variable, so the sample mean
    has a standard error of a few percent. We allow 4.5 of its own estimated
    standard errors (a chance failure rate far below 1e-4; with the fixed seed
    the outcome is deterministic anyway), and check that the test has teeth:
    the standard error is a few percent and both terms of the identity matter."""
    dataset, model, ref = setup
    stats = ref.compute(model)
    n, b, draws = len(dataset), 64, 1500
    gen = torch.Generator().manual_seed(1234)
    x, y = dataset.tensors
    sq = []
    for _ in range(draws):
        idx = torch.randperm(n, generator=gen)[:b]
        g = ref.batch_gradient(model, x[idx], y[idx])
        sq.append(sum(float(v.pow(2).sum()) for v in g.values()))
    mean = sum(sq) / draws
    se = math.sqrt(sum((s - mean) ** 2 for s in sq) / (draws - 1) / draws)
    expect = stats.grad_sq_norm + stats.trace_sigma * (1 / b - 1 / n)
    assert abs(mean - expect) < 4.5 * se, (mean, expect, se)
    assert se / expect < 0.05
    noise_term = stats.trace_sigma * (1 / b - 1 / n)
    assert 0.05 < stats.grad_sq_norm / noise_term < 20, "both terms should matter at this point"


def test_two_scale_estimate_is_the_unbiased_sample_variance():
    """With k equal micro-batches the pairwise form equals b/(k−1)·Σ|g_i − ḡ|² (no FPC)."""
    torch.manual_seed(0)
    k, b = 5, 8
    micro = [{"w": torch.randn(7, 3, dtype=torch.float64), "b": torch.randn(3, dtype=torch.float64)} for _ in range(k)]
    est = two_scale_estimate(micro, b, None)
    flat = torch.stack([torch.cat([m["w"].flatten(), m["b"]]) for m in micro])
    mean = flat.mean(0)
    assert est.trace_sigma == pytest.approx(b / (k - 1) * float((flat - mean).pow(2).sum()), rel=1e-12)
    assert est.grad_sq_norm == pytest.approx(float(mean.pow(2).sum()) - est.trace_sigma / (k * b), rel=1e-12)
    # The FPC (N known) leaves tr(Σ) unchanged ((1/b − 1/N) − (1/kb − 1/N) is N-free) and raises |G|².
    fpc = two_scale_estimate(micro, b, 100)
    assert fpc.trace_sigma == pytest.approx(est.trace_sigma, rel=1e-12)
    assert fpc.grad_sq_norm == pytest.approx(est.grad_sq_norm + est.trace_sigma / 100, rel=1e-12)


def test_two_scale_estimate_is_unbiased_on_the_data(setup):
    """Averaged over many random steps (k·b uniform without replacement), the estimator
    recovers the truth, FPC included. On 400 examples (so the FPC matters: k·b/N = 0.16),
    micro-batch gradients as means of exact per-example gradients."""
    dataset, model, _ = setup
    n, k, b, draws = 400, 4, 16, 600
    sub = ExactNoise(model, *(t[:n] for t in dataset.tensors), method="vmap")
    stats = sub.compute(model)
    pe = sub.per_example_grads(model)
    flat = torch.cat([g.reshape(n, -1) for g in pe.values()], 1)  # tensor order does not matter for norms
    gen = torch.Generator().manual_seed(99)
    gs, ts = [], []
    for _ in range(draws):
        idx = torch.randperm(n, generator=gen)[: k * b].view(k, b)
        est = two_scale_estimate([{"all": m} for m in flat[idx].mean(1)], b, n)
        gs.append(est.grad_sq_norm)
        ts.append(est.trace_sigma)

    def mean_se(v):
        m = sum(v) / len(v)
        return m, math.sqrt(sum((a - m) ** 2 for a in v) / (len(v) - 1) / len(v))

    (mg, sg), (mt, st) = mean_se(gs), mean_se(ts)
    # Same reasoning as the Monte Carlo check above: 4.5 standard errors.
    assert abs(mt - stats.trace_sigma) < 4.5 * st, (mt, stats.trace_sigma, st)
    assert abs(mg - stats.grad_sq_norm) < 4.5 * sg, (mg, stats.grad_sq_norm, sg)
    # Without the FPC, |G|² would be low by tr(Σ)/N: that bias must be resolvable here.
    assert stats.trace_sigma / n > 4.5 * sg, ("the test should be able to see a missing FPC", stats.trace_sigma / n, sg)


def test_refuses_a_hooked_model(setup):
    dataset, model, _ = setup
    m = _digits().make_model(0)
    h = m[0].register_forward_hook(lambda *a: None)
    with pytest.raises(ValueError, match="un-hooked"):
        ExactNoise(m, *dataset.tensors)
    h.remove()
    ExactNoise(m, *dataset.tensors)


def test_compute_leaves_the_live_model_alone(setup):
    dataset, model, ref = setup
    m = _digits().make_model(3)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    m(dataset.tensors[0][:4]).sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    ref.compute(m)
    for n, p in m.named_parameters():
        assert torch.equal(p.detach(), before[n]) and torch.equal(p.grad, grads[n])
        assert p.dtype == torch.float32


def test_non_linear_models_fall_back_to_vmap():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6, 3))
    x, y = torch.randn(10, 1, 8), torch.randint(0, 3, (10,))
    ref = ExactNoise(model, x, y)
    assert ref.method == "vmap"
    stats = ref.compute(model)
    params = {n: p.requires_grad_(True) for n, p in ref.params_from(model).items()}
    full = torch.autograd.grad(ref.full_batch_loss(params), list(params.values()))
    assert stats.grad_sq_norm == pytest.approx(sum(float(g.pow(2).sum()) for g in full), rel=1e-10)
    with pytest.raises(ValueError):
        ExactNoise(model, x, y, method="factored")


def test_bias_corrected_ema_and_ratio():
    ema = BiasCorrectedEMA(0.9)
    assert ema.update(5.0) == pytest.approx(5.0)  # bias correction: the first value is exact
    assert ema.update(5.0) == pytest.approx(5.0)
    ema.update(1.0)
    # m3 = 0.1·(0.81·5 + 0.9·5 + 1), divided by 1 − 0.9³
    assert ema.value == pytest.approx(0.1 * (0.81 * 5 + 0.9 * 5 + 1) / (1 - 0.729), rel=1e-12)
    out = smooth_ratio([1.0, 3.0], [10.0, 10.0], 0.5)
    # step 2: |G|² = (0.25·1 + 0.5·3)/(0.75) = 7/3, tr = 10 → B = 30/7
    assert out[1][0] == pytest.approx(7 / 3) and out[1][2] == pytest.approx(30 / 7)
