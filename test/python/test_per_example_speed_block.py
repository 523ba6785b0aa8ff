"""Sequence Linears' terms from ¾ of each Gram (from _HALVES_FROM multiply-adds) and the bias term from δ's Gram: equal
to the whole Grams' and to a separate pass over δ to 1e-12 in float64, and through the hook to torch.func's per-example
gradients."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from noisescope import _per_example_math as pem
from per_example_support import assert_sums_match, exact_sums, measure_one_step

# (examples, positions, d_in, d_out): odd and even T, T = 2 and 3 (a half of one position), the benchmark block's head
SHAPES = [(4, 65, 24, 40), (3, 64, 16, 8), (2, 2, 5, 3), (5, 3, 4, 6), (16, 64, 128, 1000)]


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{e}x{t}x{i}-{o}" for e, t, i, o in SHAPES])
@pytest.mark.parametrize("calls", [1, 2])
@pytest.mark.parametrize("chunked", [False, True], ids=["one-part", "parts"])
def test_halved_grams_equal_whole_grams_and_the_delta_pass(monkeypatch: pytest.MonkeyPatch, shape, calls: int, chunked: bool) -> None:
    examples, steps, d_in, d_out = shape
    if chunked:  # two examples a part (the last one alone where E is odd)
        monkeypatch.setattr(pem, "CHUNK_ELEMENTS", 2 * (steps * calls) ** 2)
    g = torch.Generator().manual_seed(steps + calls)
    pairs = [
        (torch.randn(examples, steps, d_in, generator=g, dtype=torch.float64), torch.randn(examples, steps, d_out, generator=g, dtype=torch.float64))
        for _ in range(calls)
    ]
    monkeypatch.setattr(pem, "_HALVES_FROM", 0)
    halves = pem.linear(pairs, "gram")
    monkeypatch.setattr(pem, "_HALVES_FROM", float("inf"))
    whole = pem.linear(pairs, "gram")
    materialised = pem.linear(pairs, "materialise")  # its bias term: Σ over positions of δ, then squared
    for got, expected in ((halves, whole), (halves, materialised), (whole, materialised)):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


def test_a_cancelling_bias_stays_small_in_float32() -> None:
    """δ summing to zero over positions (a key's bias before a softmax over positions): the Gram's sum is no exact zero
    in float32, but its error is a rounding of Σ_t |δ_t|², as a separate pass's is."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(8, 64, 32, generator=g)
    delta = torch.randn(8, 64, 48, generator=g)
    delta -= delta.mean(1, keepdim=True)
    scale = float(delta.double().square().sum())
    assert abs(float(pem.linear([(a, delta)], "gram")[1])) <= 1e-6 * scale


def test_halved_grams_through_the_hook(free_address: str) -> None:
    """A vocabulary-like head on odd-length sequences, above _HALVES_FROM: the sums equal torch.func's (float64)."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(24, 12), nn.Tanh(), nn.Linear(12, 1000)).double()
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 65, 24, generator=g, dtype=torch.float64)
    y = torch.randn(4, 65, 1000, generator=g, dtype=torch.float64)
    assert 4 * 65 * 65 * (12 + 1000) >= pem._HALVES_FROM  # the head's part is made by halves
    exact = exact_sums(model, x, y, 1 / 4)
    measured, _ = measure_one_step(model, x, y, free_address, source="per-example", sequence_form="gram")
    assert_sums_match(measured, exact, rel=1e-10)
