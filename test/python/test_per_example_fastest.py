"""`fastest` returns the chosen candidate's result at a shape's first use too: a layer's sums at its first step are
bitwise what the same input gives at later steps."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from noisescope import _per_example_math as pem


@pytest.fixture(autouse=True)
def fresh_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each test times its shapes afresh, and below the number of shapes timed at most.
    monkeypatch.setattr(pem, "_FASTEST", {})


def test_the_first_use_returns_the_winners_result_not_the_last_candidates() -> None:
    x = torch.randn(64, 64, dtype=torch.float64)
    runs: list[str] = []

    def quick() -> torch.Tensor:
        runs.append("quick")
        return torch.zeros(1)

    def slow() -> torch.Tensor:  # last, and far slower: ~40 inversions of a 64×64 matrix
        runs.append("slow")
        for _ in range(40):
            torch.linalg.inv(x)
        return torch.ones(1)

    candidates = {"quick": quick, "slow": slow}
    first = pem.fastest(("two",), candidates)
    assert runs == ["quick"] * 3 + ["slow"] * 3  # a warm-up and two timed runs each, none again
    chosen = pem._FASTEST[("two",)]
    assert torch.equal(first, candidates[chosen]())
    assert torch.equal(pem.fastest(("two",), candidates), first)


# float32, where the two exact ways round differently (~4e-7 relative on this shape), and a wide layer where oneDNN's
# grouped kernel, the first candidate, often wins: before the fix the first use returned the unfold's sums.
def test_a_conv_layers_first_use_is_bitwise_its_later_uses() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(4, 32, 16, 16)
    delta = torch.randn_like(conv(x))
    grouped = pem.grouped_weight_grads(x, delta, tuple(conv.weight.shape), conv.stride, conv.padding, conv.dilation, False, [0, 0], 1)
    columns = pem._columns_grads(conv, x, delta, conv.padding, padded=False)
    assert not torch.equal(grouped, columns)  # else the test could not fail
    for _ in range(4):  # timed afresh each time, so either may win
        pem._FASTEST.clear()
        first = pem._per_example_conv_grads(conv, x, delta)
        assert torch.equal(pem._per_example_conv_grads(conv, x, delta), first)
