"""Sampled per-example sums (watch(per_example_sample=s)): B/s × the exact sums of the drawn examples, unbiased
over draws, training bitwise untouched, argument checked, and B_simple on real training against the exact value."""
from __future__ import annotations

import math
import random
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import noisescope
from noisescope._per_example import Sampler
from per_example_support import exact_per_example, measure_one_step
from test_hook_support import parameters_of, watch_and_record
from test_per_example_layers import TokenModel
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

# id → (model, input, the layers that stay exact (a Linear on [B, d] rows: its row norms cost less than a sample), form)
CASES = {
    "sequence-linear-gram": (sequence_mlp, lambda: _x(4, 7), (), "gram"),
    "sequence-linear-materialise": (sequence_mlp, lambda: _x(2, 3, 7), (), "materialise"),
    "conv1d-stride-pad": (conv1d, lambda: _x(3, 11), ("3.weight", "3.bias"), "auto"),
    "conv2d-stride-pad-gram": (conv2d, lambda: _x(3, 7, 6), ("3.weight", "3.bias"), "gram"),
    "conv2d-stride-pad-materialise": (conv2d, lambda: _x(3, 7, 6), ("3.weight", "3.bias"), "materialise"),
    "embedding-padding": (lambda: TokenModel(0).double(), lambda: TOKENS, (), "auto"),
    "layer-norm": (layer_norm, lambda: _x(3, 4), (), "auto"),
    "attention-seq-first-3d-mask": (
        lambda: Attention(batch_first=False, mask="per-example", cross=True).double(), lambda: _x(4, 8), (), "auto"
    ),
    "attention-padding-bias-kv": (
        lambda: Attention(batch_first=True, mask="padding", add_bias_kv=True).double(), lambda: _x(4, 8), (), "auto"
    ),
    "attention-weights-in-loss": (lambda: WeightsInLoss(average=False).double(), lambda: _x(4, 8), (), "auto"),
    "embedding-tied-to-head": (lambda: TiedLM(3, True, True).double(), lambda: TOKENS, (), "auto"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sampled_sums_are_b_over_s_times_the_drawn_examples_exact_sums(free_address: str, case: str) -> None:
    make, inputs, exact_layers, form = CASES[case]
    model, x = make(), inputs()
    y = torch.randn(model(x).shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    per_example = exact_per_example(model, x, y, 1 / B)
    drawn, scale = Sampler(S).draw(B)  # a new watch's first draw: its sampler starts from the same seed
    assert drawn is not None and len(drawn) == S and scale == B / S
    measured, _ = measure_one_step(model, x, y, free_address, source="per-example", sequence_form=form, per_example_sample=S)
    assert set(measured) == set(per_example)
    for name, values in per_example.items():
        expected = float(values.sum()) if name in exact_layers else scale * float(values[drawn].sum())
        assert math.isclose(measured[name], expected, rel_tol=1e-6), f"{case} {name}: {measured[name]} vs {expected}"
    sampled = [n for n in per_example if n not in exact_layers]
    # The draw matters: the exact sums differ from the sampled estimates.
    assert any(not math.isclose(measured[n], float(per_example[n].sum()), rel_tol=1e-3) for n in sampled)


def test_a_sample_of_at_least_the_batch_is_the_exact_path_bit_for_bit(free_address: str) -> None:
    x = _x(4, 7)
    y = torch.randn(B, 4, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact, _ = measure_one_step(sequence_mlp(), x, y, free_address, source="per-example")
    for sample in (B, B + 5, 1.0):
        same, _ = measure_one_step(sequence_mlp(), x, y, free_address, source="per-example", per_example_sample=sample)
        assert same == exact, sample


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
    draws = 300
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
