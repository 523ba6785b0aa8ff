"""A few-channel convolution whose shape chose the unfold ("columns") takes its bias term from the same bmm (a row of
ones in the columns): both terms equal each example's gradients' squared norms, computed one example at a time by
autograd, to 1e-12 in float64 — Conv1d and Conv2d, stride, dilation, padding, unfolded in several chunks."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from noisescope import _per_example_math as pem

CONVS = [
    (nn.Conv2d(3, 4, 3, padding=1), (40, 40), 14),  # 43k unfolded elements an example: 3 chunks of CACHED_ELEMENTS
    (nn.Conv2d(2, 5, (3, 2), stride=(2, 1), dilation=(1, 2), padding=(2, 1)), (9, 8), 6),
    (nn.Conv1d(3, 5, 3, stride=2, dilation=2, padding=2), (40,), 6),
    (nn.Conv2d(4, 3, 1), (5, 6), 5),
]


def _autograd_terms(conv: nn.Module, x: torch.Tensor, delta: torch.Tensor) -> tuple[float, float]:
    weight = bias = 0.0
    for xe, de in zip(x, delta):
        gw, gb = torch.autograd.grad(conv(xe.unsqueeze(0)), (conv.weight, conv.bias), de.unsqueeze(0))
        weight += float(gw.square().sum())
        bias += float(gb.square().sum())
    return weight, bias


@pytest.mark.parametrize("conv, spatial, batch", CONVS, ids=[f"{type(c).__name__}-{i}" for i, (c, _, _) in enumerate(CONVS)])
def test_folded_bias_terms_equal_each_examples_gradients(monkeypatch: pytest.MonkeyPatch, conv, spatial, batch) -> None:
    torch.manual_seed(3)
    conv = conv.double()
    x = torch.randn(batch, conv.in_channels, *spatial, dtype=torch.float64)
    delta = torch.randn_like(conv(x))
    key = pem._grads_key(conv, x, delta, conv.padding)
    monkeypatch.setitem(pem._FASTEST, key, "columns")  # the unfold timed faster for this shape
    folded = pem._folded_terms
    ran: list[bool] = []
    monkeypatch.setattr(pem, "_folded_terms", lambda *args: ran.append(True) or folded(*args))
    weight, bias = pem.conv(conv, [(x, delta)], "materialise")
    assert ran == [True]
    assert bias is not None
    exact = _autograd_terms(conv, x, delta)
    assert math.isclose(float(weight), exact[0], rel_tol=1e-12) and math.isclose(float(bias), exact[1], rel_tol=1e-12)
    monkeypatch.setitem(pem._FASTEST, key, "grouped")  # and where the layer's own kernel won: as before, the same sums
    again = pem.conv(conv, [(x, delta)], "materialise")
    assert len(ran) == 1
    assert math.isclose(float(again[0]), float(weight), rel_tol=1e-12) and math.isclose(float(again[1]), float(bias), rel_tol=1e-12)
