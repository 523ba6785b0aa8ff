"""The channels-last unfold (convolutions of 8+ input channels, groups 1) gives each example's weight gradient, and the
per-example sums it leads to equal the NCHW unfold's to 1e-12 in float64 — one call or several, any padding."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from noisescope import _per_example_math as pem

CONVS = [
    (nn.Conv2d, dict(in_channels=8, out_channels=5, kernel_size=3, stride=(2, 1), padding=(1, 2)), (7, 6)),
    (nn.Conv2d, dict(in_channels=9, out_channels=4, kernel_size=(3, 2), stride=2, dilation=(2, 1)), (9, 8)),
    (nn.Conv2d, dict(in_channels=8, out_channels=3, kernel_size=3, padding="same", padding_mode="reflect"), (6, 7)),
    (nn.Conv2d, dict(in_channels=12, out_channels=6, kernel_size=1, bias=False), (4, 5)),
    (nn.Conv1d, dict(in_channels=8, out_channels=4, kernel_size=3, stride=2, padding=1), (9,)),
    (nn.Conv1d, dict(in_channels=10, out_channels=6, kernel_size=2, padding="same", padding_mode="circular", dilation=3), (8,)),
]
IDS = [f"{kind.__name__}-{i}" for i, (kind, _, _) in enumerate(CONVS)]


def made(kind, options, spatial, calls: int = 1) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(7)
    conv = kind(**options).double()
    pairs = []
    for _ in range(calls):
        x = torch.randn(5, options["in_channels"], *spatial, dtype=torch.float64)
        pairs.append((x, torch.randn_like(conv(x))))
    return conv, pairs


def only_columns(monkeypatch: pytest.MonkeyPatch, chosen: list[str]) -> None:
    """`fastest` always takes "columns"; `chosen` says which unfold each call ran."""
    channels_last = pem._channels_last_product

    def columns(key: tuple, candidates: dict) -> torch.Tensor:
        chosen.append("columns")
        return candidates["columns"]()

    def spied(*args):
        chosen.append("channels-last")
        return channels_last(*args)

    monkeypatch.setattr(pem, "fastest", columns)
    monkeypatch.setattr(pem, "_channels_last_product", spied)


@pytest.mark.parametrize("kind, options, spatial", CONVS, ids=IDS)
def test_channels_last_columns_are_each_examples_weight_gradient(monkeypatch: pytest.MonkeyPatch, kind, options, spatial) -> None:
    conv, [(x, delta)] = made(kind, options, spatial)
    chosen: list[str] = []
    only_columns(monkeypatch, chosen)
    grads = pem._per_example_conv_grads(conv, x, delta)
    expected = torch.stack(
        [torch.autograd.grad((conv(x[e : e + 1]) * delta[e : e + 1]).sum(), conv.weight)[0] for e in range(x.shape[0])]
    )
    assert chosen == ["columns", "channels-last"]
    torch.testing.assert_close(grads, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("calls", [1, 2])
@pytest.mark.parametrize("kind, options, spatial", CONVS, ids=IDS)
def test_sums_equal_the_nchw_unfolds(monkeypatch: pytest.MonkeyPatch, kind, options, spatial, calls: int) -> None:
    conv, pairs = made(kind, options, spatial, calls)
    chosen: list[str] = []
    only_columns(monkeypatch, chosen)
    last = pem.conv(conv, pairs, "materialise")
    assert chosen == ["columns", "channels-last"] * calls
    monkeypatch.setattr(pem, "_CHANNELS_LAST_FROM", 10**9)  # every convolution unfolded as NCHW
    nchw = pem.conv(conv, pairs, "materialise")
    for got, want in zip(last, nchw):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


MORE_CONVS = [
    *CONVS,
    (nn.Conv2d, dict(in_channels=3, out_channels=5, kernel_size=3, padding=1), (6, 6)),  # NCHW unfold: 3 channels
    (nn.Conv2d, dict(in_channels=8, out_channels=6, kernel_size=3, stride=2, groups=2), (7, 7)),  # NCHW unfold: groups
]


@pytest.mark.parametrize("kind, options, spatial", MORE_CONVS, ids=[f"{k.__name__}-{i}" for i, (k, _, _) in enumerate(MORE_CONVS)])
def test_columns_unfolded_a_few_examples_at_a_time_are_the_same(monkeypatch: pytest.MonkeyPatch, kind, options, spatial) -> None:
    conv, [(x, delta)] = made(kind, options, spatial)
    only_columns(monkeypatch, [])
    whole = pem._per_example_conv_grads(conv, x, delta)
    unfolded = options["in_channels"] * conv.weight[0, 0].numel() * delta[0, 0].numel()  # an example's columns
    monkeypatch.setattr(pem, "CACHED_ELEMENTS", 2 * unfolded)
    assert len(pem._chunks(x.shape[0], unfolded, pem.CACHED_ELEMENTS)) == 3  # 2 + 2 + 1 examples
    torch.testing.assert_close(pem._per_example_conv_grads(conv, x, delta), whole, rtol=1e-12, atol=1e-14)
