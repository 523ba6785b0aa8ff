"""Linears on [B, d] rows: two row norms in the δ hook, every layer's sums in one batched op at the step's end.

Against torch.func per-sample gradients at 1e-12 in float64 (the factorised form is exact, not an estimate), with
layers of two dtypes in one model (one batched op per dtype), and the backward variants that reach the δ hook
differently: create_graph (δ itself has a graph) and two backward passes through one forward (no sums, one warning).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from per_example_support import assert_sums_match, exact_sums, measure_one_step, regression_loss
from test_hook_support import make_model, micro_batch, parameters_of, watch_and_record

B = 6


def data(d_in: int, d_out: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, d_in, generator=g, dtype=dtype), torch.randn(B, d_out, generator=g, dtype=dtype)


def mlp(seed: int = 0) -> nn.Module:
    """Four row Linears, one of them without a bias (its bias index is None)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(7, 9, bias=False), nn.Tanh(), nn.Linear(9, 9), nn.Tanh(), nn.Linear(9, 5), nn.Tanh(), nn.Linear(5, 3)
    ).double()


def test_row_linears_equal_torch_func_to_1e12_in_float64(free_address: str) -> None:
    model = mlp()
    x, y = data(7, 3)
    exact = exact_sums(model, x, y, 1 / B)
    measured, _ = measure_one_step(model, x, y, free_address, source="per-example")
    assert len(measured) == 7
    assert_sums_match(measured, exact, rel=1e-12)


def test_bfloat16_row_linears_stay_within_round_off_of_the_float64_truth(free_address: str) -> None:
    """Half-precision rows: their norms are taken in float32, the sums in float64."""
    model = mlp(7)
    x, y = data(7, 3, seed=8)
    exact = exact_sums(model, x, y, 1 / B)
    measured, _ = measure_one_step(model.to(torch.bfloat16), x.bfloat16(), y.bfloat16(), free_address, source="per-example")
    assert len(measured) == 7
    assert_sums_match(measured, exact, rel=5e-2)


def test_micro_batches_of_two_sizes_share_the_step_end_op_and_each_keeps_its_own_sums(free_address: str) -> None:
    """Accumulation over micro-batches of 6, 6 and 4 examples: the two of 6 are one group, the one of 4 another."""
    sizes = (6, 6, 4)
    model = make_model(dtype=torch.float64)
    batches = [micro_batch(0, j, b, torch.float64) for j, b in enumerate(sizes)]
    cross_entropy = lambda o, t: F.cross_entropy(o, t)  # noqa: E731
    exact = [exact_sums(model, x, y, 1 / (len(sizes) * len(x)), loss=cross_entropy) for x, y in batches]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    ns, records = watch_and_record(model, optimizer, free_address, source="per-example")
    names = [layer.name for layer in ns._sender._info.layers]
    for x, y in batches:
        (F.cross_entropy(model(x), y) / len(sizes)).backward()
    optimizer.step()
    ns.remove()
    assert len(records) == 1 and len(records[0].per_example_sums) == len(sizes)
    for sums, truth in zip(records[0].per_example_sums, exact):
        assert_sums_match(dict(zip(names, sums)), truth, rel=1e-12)


class TwoDtypes(nn.Module):
    """A float64 layer feeding float32 ones: two groups of row Linears at the step's end."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.wide = nn.Linear(7, 9).double()
        self.body = nn.Sequential(nn.Tanh(), nn.Linear(9, 5), nn.Tanh(), nn.Linear(5, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.wide(x).float()).double()


def test_row_linears_of_two_dtypes_in_one_model(free_address: str) -> None:
    model = TwoDtypes()
    x, y = data(7, 3, seed=2)
    exact = exact_sums(model, x, y, 1 / B)
    measured, _ = measure_one_step(model, x, y, free_address, source="per-example")
    assert len(measured) == 6
    assert_sums_match(measured, exact, rel=1e-5)  # δ passes through float32 layers on both sides


def test_create_graph_backward_keeps_the_sums_exact_and_the_training_unchanged(free_address: str) -> None:
    """backward(create_graph=True): δ carries a graph; the sums take none of it and stay exact."""
    x, y = data(7, 3, seed=3)
    plain, watched = mlp(4), mlp(4)
    exact = exact_sums(watched, x, y, 1 / B)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (plain, watched)]
    ns, records = watch_and_record(watched, optimizers[1], free_address, source="per-example")
    for model, optimizer in zip((plain, watched), optimizers):
        loss = torch.stack([regression_loss(o, t) for o, t in zip(model(x), y)]).mean()
        loss.backward(create_graph=True)
        optimizer.step()
        for p in model.parameters():
            p.grad = None  # the graph the gradients carry
    names = [layer.name for layer in ns._sender._info.layers]
    ns.remove()
    assert len(records) == 1 and records[0].per_example_sums
    assert_sums_match(dict(zip(names, records[0].per_example_sums[0])), exact, rel=1e-12)
    for a, b in zip(parameters_of(plain), parameters_of(watched)):
        assert torch.equal(a, b)


def test_two_backward_passes_through_one_forward_carry_no_sums_and_training_goes_on(free_address: str, caplog) -> None:
    """The second backward finds the row Linears' inputs gone; the meter sees two backwards for one forward."""
    x, y = data(7, 3, seed=5)
    plain, watched = mlp(6), mlp(6)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (plain, watched)]
    ns, records = watch_and_record(watched, optimizers[1], free_address, source="per-example")
    with caplog.at_level(logging.INFO, logger="noisescope"):
        for model, optimizer in zip((plain, watched), optimizers):
            loss = torch.stack([regression_loss(o, t) for o, t in zip(model(x), y)]).mean()
            loss.backward(retain_graph=True)
            loss.backward()
            optimizer.step()
        ns.remove()
    assert not ns._guard.tripped
    assert len(records) == 1 and not records[0].per_example_sums
    assert any("carries no per-example sums" in r.getMessage() for r in caplog.records)
    for a, b in zip(parameters_of(plain), parameters_of(watched)):
        assert torch.equal(a, b)
