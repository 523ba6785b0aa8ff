"""Sampled per-example sums (watch(per_example_sample=s)): importance-weighted sums Σ_k w_k |g_{i_k}|² of the drawn
examples (drawn from the first δ), unbiased over draws (a poor proposal too), training bitwise untouched, argument
checked, the sidecar taking a sampled rank's sums below |h|²/B, and B_simple on real training against the exact value."""
from __future__ import annotations

import math
import random
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import noisescope
from noisescope._per_example import Draw, Sampler
from per_example_support import exact_per_example, measure_one_step, regression_loss
from test_hook_support import parameters_of, wait_connected, watch_and_record
from test_per_example_layers import TokenModel
from test_accuracy_e2e import beta_sidecar  # noqa: F401 (a fixture)
from test_per_example_more_layers import Attention, TiedLM, WeightsInLoss

B, S = 8, 3


def sequence_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def conv1d() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv1d(3, 4, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(24, 3)).double()


def conv2d() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 5, 3, stride=(2, 1), padding=(1, 2)), nn.Tanh(), nn.Flatten(), nn.Linear(160, 3)).double()


def layer_norm() -> nn.Module:
    torch.manual_seed(4)
    norm = nn.LayerNorm(5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return nn.Sequential(nn.Linear(4, 5), norm, nn.Tanh(), nn.Linear(5, 2)).double()


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(B, *shape, generator=torch.Generator().manual_seed(10), dtype=torch.float64)


TOKENS = torch.randint(0, 9, (B, 5), generator=torch.Generator().manual_seed(11))
TOKENS[:, 0] = 0  # the padding row in every example

def then_sequence_linear(model: nn.Module) -> nn.Module:
    """model's [B, 4, 8] output through a sequence Linear: its δ comes first, so the model's own layers are sampled."""
    torch.manual_seed(6)
    return nn.Sequential(model, nn.Linear(8, 3).double())


# id → (model, input, the layer whose δ comes first (the draw's), the layers that stay exact (a Linear on [B, d] rows:
# its row norms cost less than a sample), form)
CASES = {
    "sequence-linear-gram": (sequence_mlp, lambda: _x(4, 7), "2", (), "gram"),
    "sequence-linear-materialise": (sequence_mlp, lambda: _x(2, 3, 7), "2", (), "materialise"),
    "conv1d-stride-pad": (conv1d, lambda: _x(3, 11), "3", ("3.weight", "3.bias"), "auto"),
    "conv2d-stride-pad-gram": (conv2d, lambda: _x(3, 7, 6), "3", ("3.weight", "3.bias"), "gram"),
    "conv2d-stride-pad-materialise": (conv2d, lambda: _x(3, 7, 6), "3", ("3.weight", "3.bias"), "materialise"),
    "embedding-padding": (lambda: TokenModel(0).double(), lambda: TOKENS, "head", (), "auto"),
    "layer-norm": (layer_norm, lambda: _x(3, 4), "3", (), "auto"),
    "attention-seq-first-3d-mask": (
        lambda: then_sequence_linear(Attention(batch_first=False, mask="per-example", cross=True).double()),
        lambda: _x(4, 8), "1", (), "auto",
    ),
    "attention-padding-bias-kv": (
        lambda: then_sequence_linear(Attention(batch_first=True, mask="padding", add_bias_kv=True).double()),
        lambda: _x(4, 8), "1", (), "auto",
    ),
    "attention-seq-first-drawing": (  # its own δ (batch at dim 1) is the first
        lambda: Attention(batch_first=False, mask="causal").double(), lambda: _x(4, 8), "attn", (), "auto"
    ),
    "attention-weights-in-loss": (
        lambda: then_sequence_linear(WeightsInLoss(average=False).double()), lambda: _x(4, 8), "1", (), "auto"
    ),
    # The second head's δ comes first (autograd runs the later call's branch first).
    "embedding-tied-to-head": (lambda: TiedLM(3, True, True).double(), lambda: TOKENS, "aux", (), "auto"),
}


def first_draw(model: nn.Module, x: torch.Tensor, y: torch.Tensor, first: str) -> Draw:
    """The draw a new watch makes at δ of module `first` (its output's gradient, from autograd here), with its
    [B, d] input when it is a row Linear."""
    module = model.get_submodule(first)
    seen: dict[str, torch.Tensor] = {}
    handle = module.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out[0] if isinstance(out, tuple) else out))
    try:
        out = model(x)
    finally:
        handle.remove()
    loss = torch.stack([regression_loss(o, t) for o, t in zip(out, y)]).mean()  # as measure_one_step
    (delta,) = torch.autograd.grad(loss, seen["out"])
    rows = seen["x"] if isinstance(module, nn.Linear) and seen["x"].dim() == 2 else None
    batch_dim = 1 if isinstance(module, nn.MultiheadAttention) and not module.batch_first else 0
    drawn = Sampler(S).draw(delta, batch_dim, rows)  # a new sampler starts from the hook's seed
    assert drawn is not None
    return drawn


@pytest.mark.parametrize("case", list(CASES))
def test_sampled_sums_are_the_weighted_exact_sums_of_the_drawn_examples(free_address: str, case: str) -> None:
    """Every covered layer but row Linears gives Σ_k w_k |g_{i_k}|² over the draw the proposal at the first δ makes, w_k = 1/(s·p_{i_k}): torch.func per-example norms, 1e-6."""
    make, inputs, first, exact_layers, form = CASES[case]
    model, x = make(), inputs()
    y = torch.randn(model(x).shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    per_example = exact_per_example(model, x, y, 1 / B)
    drawn = first_draw(model, x, y, first)
    assert len(drawn.index) == S
    measured, _ = measure_one_step(model, x, y, free_address, source="per-example", sequence_form=form, per_example_sample=S)
    assert set(measured) == set(per_example)
    weights = drawn.root_weight.double().square()
    for name, values in per_example.items():
        expected = float(values.sum()) if name in exact_layers else float((weights * values[drawn.index]).sum())
        assert math.isclose(measured[name], expected, rel_tol=1e-6), f"{case} {name}: {measured[name]} vs {expected}"
    sampled = [n for n in per_example if n not in exact_layers]
    # The draw matters: the exact sums differ from the sampled estimates.
    assert any(not math.isclose(measured[n], float(per_example[n].sum()), rel_tol=1e-3) for n in sampled)


def test_the_proposal_mixes_the_first_delta_with_uniform_and_copes_with_zero_and_non_finite() -> None:
    delta = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    a = Sampler.MIXTURE
    assert torch.allclose(Sampler.proposal(delta), (1 - a) * torch.tensor([25.0, 0, 1, 0]) / 26 + a / 4)
    rows = torch.tensor([[1.0], [5.0], [2.0], [0.0]])  # a row Linear: q_i = |δ_i|²(|x_i|² + 1), its per-example norm
    assert torch.allclose(Sampler.proposal(delta, 0, rows), (1 - a) * torch.tensor([50.0, 0, 5, 0]) / 55 + a / 4)
    assert torch.allclose(Sampler.proposal(delta.T.contiguous(), 1), Sampler.proposal(delta))  # batch at dim 1
    for bad in (torch.zeros(4, 2), torch.tensor([[1.0], [math.nan], [0.0], [2.0]]), torch.tensor([[math.inf], [1.0], [0.0], [2.0]])):
        assert torch.allclose(Sampler.proposal(bad), torch.full((4,), 0.25)), bad


def test_a_sample_of_at_least_the_batch_is_the_exact_path_bit_for_bit(free_address: str) -> None:
    x = _x(4, 7)
    y = torch.randn(B, 4, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact, _ = measure_one_step(sequence_mlp(), x, y, free_address, source="per-example")
    for sample in (B, B + 5, 1.0):
        same, _ = measure_one_step(sequence_mlp(), x, y, free_address, source="per-example", per_example_sample=sample)
        assert same == exact, sample


def test_a_model_of_row_linears_draws_nothing(free_address: str) -> None:
    """Every layer a Linear on [B, d] rows (exact anyway: its row norms cost less than a sample): no draw is made."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    ns, records = watch_and_record(model, optimizer, free_address, source="per-example", per_example_sample=S)
    F.cross_entropy(model(_x(7)), torch.arange(B) % 3).backward()
    optimizer.step()
    sampler = ns._meter._per_example.sampler
    ns.remove()
    assert len(records) == 1 and records[0].per_example_sums and sampler.last is None


def test_a_fraction_samples_that_share_of_the_batch(free_address: str) -> None:
    assert Sampler(0.25).count(64) == 16 and Sampler(0.01).count(64) == 1 and Sampler(5).count(64) == 5


class Stack(nn.Module):
    """Sequence Linear, Conv1d, LayerNorm and a row Linear head, with dropout drawing from torch's global RNG."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(20)
        self.embed = nn.Linear(6, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(torch.tanh(self.embed(x)), 0.2, self.training)
        h = h + torch.tanh(self.conv(h.transpose(1, 2))).transpose(1, 2)
        return self.head(self.norm(h).mean(1))


def stack_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(B, 5, 6, generator=g), torch.randint(0, 4, (B,), generator=g)


def test_many_draws_average_to_the_exact_sums_and_actually_vary(free_address: str) -> None:
    """The same batch at the same parameters (lr 0) measured DRAWS times: each layer's mean sampled sum is within
    4 standard errors (from the draws' own spread) of the exact sum."""
    draws = 200
    model = Stack().double().eval()  # no dropout: every draw sees the same gradients
    x, y = stack_batch(0)
    x = x.double()
    ce = lambda o, t: F.cross_entropy(o, t)  # noqa: E731
    exact = {n: float(v.sum()) for n, v in exact_per_example(model, x, y, 1 / B, loss=ce).items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    ns, records = watch_and_record(model, optimizer, free_address, source="per-example", per_example_sample=S)
    names = [layer.name for layer in ns._sender._info.layers]
    for _ in range(draws):
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    ns.remove()
    assert len(records) == draws and all(r.per_example_sums for r in records)
    for i, name in enumerate(names):
        values = [r.per_example_sums[0][i] for r in records]
        if name.startswith("head."):  # a row Linear: exact every time
            assert all(math.isclose(v, exact[name], rel_tol=1e-9) for v in values), name
            continue
        mean, spread = statistics.fmean(values), statistics.stdev(values)
        assert spread > 1e-3 * mean, f"{name}: the draws do not vary"
        assert abs(mean - exact[name]) <= 4 * spread / math.sqrt(draws), f"{name}: mean {mean} vs exact {exact[name]} (sd {spread})"


def train_stack(watched: bool, address: str, steps: int = 6) -> tuple[list[torch.Tensor], torch.Tensor, object]:
    torch.manual_seed(1234)
    random.seed(1234)
    model = Stack()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ns, records = watch_and_record(model, optimizer, address, source="per-example", per_example_sample=S) if watched else (None, [])
    for step in range(steps):
        x, y = stack_batch(step)
        F.cross_entropy(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        optimizer.zero_grad()
    if ns is not None:
        ns.remove()
        assert len(records) == steps and all(r.per_example_sums for r in records)  # it really sampled
    return parameters_of(model), torch.random.get_rng_state(), random.getstate()


def test_training_with_sampling_is_bitwise_identical_and_leaves_the_global_rngs_alone(free_address: str) -> None:
    plain, plain_rng, plain_py = train_stack(False, free_address)
    hooked, hooked_rng, hooked_py = train_stack(True, free_address)
    for a, b in zip(plain, hooked):
        assert torch.equal(a, b)
    assert torch.equal(plain_rng, hooked_rng) and plain_py == hooked_py


@pytest.mark.parametrize(
    "value, kwargs, error, says",
    [
        (0, {}, ValueError, "≥ 1"),
        (-2, {}, ValueError, "≥ 1"),
        (float("nan"), {}, ValueError, "(0, 1]"),
        (1.5, {}, ValueError, "(0, 1]"),
        (0.0, {}, ValueError, "(0, 1]"),
        (True, {}, TypeError, "bool"),
        ("4", {}, TypeError, "str"),
        (4, {"source": "accumulation"}, ValueError, "source='accumulation'"),
        (4, {"mode": "dense"}, ValueError, "mode='dense'"),
        (4, {"mode": "sketch"}, ValueError, "mode='sketch'"),
    ],
)
def test_bad_per_example_sample_values_are_refused_at_watch(free_address: str, value, kwargs: dict, error: type, says: str) -> None:
    model = sequence_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(error, match="per_example_sample") as raised:
        noisescope.watch(model, optimizer, address=free_address, per_example_sample=value, **kwargs)
    assert says in str(raised.value)


class Saturating(nn.Module):
    """A proposal that is deliberately poor: half the examples saturate tanh (|h| ≈ 1 per unit, constant over the
    sequence) and dominate q at the head, yet their first layer's gradient is ~0; the other half carry it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(40)
        self.inner = nn.Linear(4, 8)  # on [B, T, 4]: sampled
        self.head = nn.Linear(8, 3)  # on [B, 8] rows: its δ comes first
        with torch.no_grad():
            self.inner.weight[:, 0] = 1.0  # an input along dim 0 saturates every unit alike

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.inner(x)).mean(1))


def saturating_batch(seed: int = 41) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 5, 4, generator=g, dtype=torch.float64)
    x[B // 2 :] = 0.0
    x[B // 2 :, :, 0] = torch.randn(B // 2, 1, generator=g, dtype=torch.float64).sign() * 1000  # tanh' ≈ 0
    return x, torch.randint(0, 3, (B,), generator=g)


def test_many_draws_are_unbiased_with_a_deliberately_poor_proposal(free_address: str) -> None:
    draws = 400
    model = Saturating().double()
    x, y = saturating_batch()
    exact = exact_per_example(model, x, y, 1 / B, loss=lambda o, t: F.cross_entropy(o, t))
    saturated = float(exact["inner.weight"][B // 2 :].sum()) / float(exact["inner.weight"].sum())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    ns, records = watch_and_record(model, optimizer, free_address, source="per-example", per_example_sample=S)
    sampler = ns._meter._per_example.sampler
    favoured = []
    for _ in range(draws):
        F.cross_entropy(model(x), y).backward()
        favoured.append(float(sampler.last.proposal[B // 2 :].sum()))
        optimizer.step()
        optimizer.zero_grad()
    ns.remove()
    # The proposal puts most of its mass where the layer has almost none of its sum.
    assert saturated < 1e-3 and min(favoured) > 0.7, (saturated, min(favoured))
    assert len(records) == draws
    for i, name in enumerate(layer.name for layer in ns._sender._info.layers):
        values = [r.per_example_sums[0][i] for r in records]
        true = float(exact[name].sum())
        if name.startswith("head."):
            assert all(math.isclose(v, true, rel_tol=1e-9) for v in values), name
            continue
        mean, spread = statistics.fmean(values), statistics.stdev(values)
        assert abs(mean - true) <= 4 * spread / math.sqrt(draws), f"{name}: mean {mean} vs exact {true} (sd {spread})"


def test_a_sampled_sum_below_the_cauchy_schwarz_bound_reaches_the_sidecar_as_a_step(sidecar) -> None:
    """The poor proposal's first draw takes only saturated examples: the first layer's estimate falls below
    |h|²/B, which no exact sum can; the rank's Hello says its sums are sampled, so the real sidecar takes the step."""
    model = Saturating().double()
    x, y = saturating_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ns, records = watch_and_record(model, optimizer, sidecar.address, run="sampled-below", source="per-example", per_example_sample=S)
    wait_connected(ns)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    names = [layer.name for layer in ns._sender._info.layers]
    ns.remove()
    (record,) = records
    below = [n for n, norm, total in zip(names, record.micro_sq_norms[0], record.per_example_sums[0]) if total < norm / B]
    assert "inner.weight" in below, list(zip(names, record.micro_sq_norms[0], record.per_example_sums[0]))
    step = sidecar.wait_for(lambda e: e["type"] == "step" and e.get("run") == "sampled-below")
    assert step["source"] == "per-example" and step["raw"] is not None, step


# ------------------------------------------------------------------ real training, end to end

E2E_STEPS = 300
E2E_BATCH = 64
E2E_SAMPLE = E2E_BATCH // 4
E2E_TOLERANCE = 0.15  # B_simple, median |relative error| over the second half: the goal (see the test's docstring)


class DigitsConv(nn.Module):
    """load_digits as 8×8 images through convolutions only (the classifier a 4×4 one): every parameter sampled."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.head = nn.Conv2d(16, 10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.c2(torch.tanh(self.c1(x.view(-1, 1, 8, 8)))))).flatten(1)


def head_draw(sampler: Sampler, model: DigitsConv, x: torch.Tensor, y: torch.Tensor) -> Draw | None:
    """What the hook draws: from δ at the head's output (the first δ of the backward), as demo.train's loss makes it."""
    seen: list[torch.Tensor] = []
    handle = model.head.register_forward_hook(lambda m, args, out: seen.append(out))
    try:
        loss = F.cross_entropy(model(x), y)
    finally:
        handle.remove()
    (delta,) = torch.autograd.grad(loss / 1, seen[0])
    return sampler.draw(delta)


def two_scale_from_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int, drawn: Draw | None):
    """The per-example estimate from this batch's per-example gradients (torch.func): batch of one vs the batch, with
    Σ_e |g_e|² per parameter tensor (all when `drawn` is None; else Σ_k w_k |g_{i_k}|²)."""
    from exact_noise import LayerNoise
    from torch.func import functional_call, grad, vmap

    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xe: torch.Tensor, ye: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (xe.unsqueeze(0),)), ye.unsqueeze(0))

    batch, inv_n = x.shape[0], 1.0 / n
    sum_sq, y_big = 0.0, 0.0
    for g in vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y).values():
        flat = g.reshape(batch, -1).double()
        per, big = flat.square().sum(1), float(flat.mean(0).square().sum())
        total = float(per.sum()) if drawn is None else float((drawn.root_weight.double().square() * per[drawn.index]).sum())
        sum_sq, y_big = sum_sq + total, y_big + big
    x_small, x_big = 1.0 - inv_n, 1.0 / batch - inv_n
    trace = (sum_sq / batch - y_big) / (x_small - x_big)
    return LayerNoise(grad_sq_norm=y_big - trace * x_big, trace_sigma=trace)


def test_sampled_b_simple_on_real_training_against_the_exact_value(beta_sidecar) -> None:
    """load_digits, one micro-batch of 64 per step, s = 16 (a quarter), real sidecar over real gRPC. The sidecar equals a
    replica that draws the same examples from the head's δ (autograd) to ~2e-7 (pipeline), and its smoothed B_simple is
    near the whole-set truth.

    Measured (300 steps, beta 0.99, median |error| over the second half): B_simple 8.1% with the hook's seed; the exact
    per-example estimator on the same steps 10.2%. The same training re-sampled offline with 40 other seeds
    (test/python/bench_per_example_sampled_accuracy.py, α = 0.05): median 10.1%, p90 12.3%, max 13.9% (s = 8: 9.1% /
    13.0% / 15.3%); a uniform sample of 16 gave median 17.1%, max 33.4% (this seed 24.3%). Asserted: the issue's goal, 15%."""
    import copy
    import dataclasses
    import time

    from exact_noise import ExactNoise
    from noisescope import demo
    from test_accuracy_e2e import BETA, Trace, compare, format_report, step_events

    run = "per-example-sampled-e2e"
    dataset = demo.make_data()
    n = len(dataset)
    model = DigitsConv()
    reference = ExactNoise(model, *dataset.tensors, dtype=torch.float32)  # before watch(): an un-hooked copy
    replica_model = copy.deepcopy(model)
    optimizer = demo.make_optimizer(model, lr=demo.LR)
    trace = Trace(micro_batch=1, accumulation=E2E_BATCH, dataset_size=n)
    exact_replica: list[tuple[float, float]] = []
    sampler = Sampler(E2E_SAMPLE)  # the hook's draws, in the same order
    batch: list[tuple[torch.Tensor, torch.Tensor]] = []
    spent = [0.0]

    def before_step(step: int, m: nn.Module) -> None:
        t0 = time.perf_counter()
        truth = reference.compute(m)
        trace.exact.append((truth.grad_sq_norm, truth.trace_sigma))
        replica_model.load_state_dict(m.state_dict())
        x, y = batch.pop()
        drawn = head_draw(sampler, replica_model, x, y)
        for out, chosen in ((trace.replica, drawn), (exact_replica, None)):
            est = two_scale_from_examples(replica_model, x, y, n, chosen)
            out.append((est.grad_sq_norm, est.trace_sigma))
        trace.clipped.append(sum(float(p.grad.double().square().sum()) for p in m.parameters()) ** 0.5 > demo.CLIP)
        spent[0] += time.perf_counter() - t0

    handle = noisescope.watch(model, optimizer, address=beta_sidecar.address, run=run, dataset_size=n, per_example_sample=E2E_SAMPLE)
    assert handle._sender._info.per_example, "auto should pick the per-example source here"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        demo.train(
            model, optimizer, dataset, steps=E2E_STEPS, micro_batch=E2E_BATCH, accumulation=1, clip=demo.CLIP, seed=0,
            before_step=before_step, on_micro_batch=lambda step, j, x, y: batch.append((x, y)),
        )
    finally:
        torch.set_num_threads(threads)
        handle.remove()
    trace.seconds = {"train_total": time.perf_counter() - started, "reference": spent[0]}
    events, layer_events = step_events(beta_sidecar, run, E2E_STEPS)
    report = compare(trace, events, BETA, layer_events)
    exact_report = compare(dataclasses.replace(trace, replica=exact_replica), events, BETA)
    print("\n" + format_report(report).replace("accuracy e2e", f"sampled per-example ({E2E_SAMPLE} of {E2E_BATCH}) e2e"))
    print(f"  exact per-example replica vs truth (same steps): B_simple {exact_report['replica_vs_truth']['bSimple']:.1%}, "
          f"tr(Σ) {exact_report['replica_vs_truth']['traceSigma']:.1%}")
    assert not report["missing_steps"] and report["steps_measured"] == E2E_STEPS, report["missing_steps"]
    last = next(e for e in events if e["step"] == E2E_STEPS - 1)
    assert last["source"] == "per-example" and last["globalBatch"] == E2E_BATCH and last["microBatches"] == 1
    # The sidecar says the sums are sampled: in the run's info and its plain line (an exact run's says nothing).
    assert [e.get("perExampleSampled") for e in beta_sidecar.of_type("run") if e["run"] == run][-1] is True
    pd = report["pipeline_max_dev"]
    assert max(pd["raw"].values()) < 1e-5 and max(pd["smoothed"].values()) < 1e-5, pd
    assert report["vs_truth"]["bSimple"] <= E2E_TOLERANCE, report["vs_truth"]
