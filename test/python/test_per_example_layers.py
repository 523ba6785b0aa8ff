"""Per-example sums per layer type, through watch(), against per-sample gradients from torch.func (float64)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from per_example_support import assert_sums_match, exact_sums, measure_one_step

B = 6


def data(*shape: int, out: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, *shape, generator=g, dtype=torch.float64), torch.randn(B, *out, generator=g, dtype=torch.float64)


def check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, address: str, **kwargs) -> None:
    """The exact sums first: the measured step then updates the parameters."""
    exact = exact_sums(model, x, y, 1 / B)
    assert_sums_match(measure_one_step(model, x, y, address, **kwargs)[0], exact)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3)).double()


@pytest.mark.parametrize("reduction, scale", [("mean", 1 / B), ("sum", 1.0)])
def test_linear_2d_under_mean_and_sum_reduction(free_address: str, reduction: str, scale: float) -> None:
    model = mlp()
    x, y = data(7, out=(3,))
    exact = exact_sums(model, x, y, scale)
    measured, _ = measure_one_step(model, x, y, free_address, reduction=reduction)
    assert_sums_match(measured, exact)


@pytest.mark.parametrize("form", ["gram", "materialise", "auto"])
@pytest.mark.parametrize("middle", [(4,), (2, 3)], ids=["seq", "two-dims"])
def test_linear_with_sequence_dims_in_both_forms(free_address: str, form: str, middle: tuple[int, ...]) -> None:
    model = mlp()
    x, y = data(*middle, 7, out=(*middle, 3))
    exact = exact_sums(model, x, y, 1 / B)
    measured, _ = measure_one_step(model, x, y, free_address, sequence_form=form)
    assert_sums_match(measured, exact)


def test_sequence_form_picks_the_cheaper_one() -> None:
    from noisescope._per_example_math import sequence_form

    assert sequence_form(4, 512, 512) == "gram"  # short sequences, wide layers
    assert sequence_form(4096, 16, 16) == "materialise"  # long sequences, narrow layers


@pytest.mark.parametrize(
    "conv, length",
    [
        (dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1), 11),
        (dict(in_channels=3, out_channels=4, kernel_size=3, stride=1, padding=2, dilation=2), 9),
        (dict(in_channels=4, out_channels=6, kernel_size=3, padding="same", padding_mode="reflect", groups=2), 8),
        (dict(in_channels=3, out_channels=4, kernel_size=2, padding=1, padding_mode="circular", bias=False), 7),
    ],
    ids=["stride-pad", "dilation", "same-reflect-groups", "circular-nobias"],
)
def test_conv1d(free_address: str, conv: dict, length: int) -> None:
    torch.manual_seed(1)
    layer = nn.Conv1d(**conv).double()
    model = nn.Sequential(layer, nn.Tanh()).double()
    x = torch.randn(B, conv["in_channels"], length, dtype=torch.float64)
    y = torch.randn_like(model(x))
    check(model, x, y, free_address)


@pytest.mark.parametrize(
    "conv",
    [
        dict(in_channels=3, out_channels=5, kernel_size=3, stride=(2, 1), padding=(1, 2)),
        dict(in_channels=3, out_channels=4, kernel_size=(3, 2), stride=2, padding=2, dilation=(2, 1)),
        dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4),  # depthwise
        dict(in_channels=2, out_channels=3, kernel_size=3, padding="same", padding_mode="replicate"),
    ],
    ids=["stride-pad", "dilation", "depthwise", "same-replicate"],
)
@pytest.mark.parametrize("form", ["gram", "materialise"])
def test_conv2d(free_address: str, conv: dict, form: str) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(**conv), nn.Tanh(), nn.Flatten(), nn.LazyLinear(3)).double()
    x = torch.randn(B, conv["in_channels"], 7, 6, dtype=torch.float64)
    model(x)  # materialise the lazy layer
    y = torch.randn(B, 3, dtype=torch.float64)
    check(model, x, y, free_address, sequence_form=form)


class TokenModel(nn.Module):
    def __init__(self, padding_idx: int | None) -> None:
        super().__init__()
        self.embed = nn.Embedding(9, 4, padding_idx=padding_idx)
        self.head = nn.Linear(4, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(tokens)))


@pytest.mark.parametrize("padding_idx", [None, 0, 3])
def test_embedding_with_repeated_tokens_and_padding(free_address: str, padding_idx: int | None) -> None:
    torch.manual_seed(3)
    model = TokenModel(padding_idx).double()
    tokens = torch.tensor([[1, 1, 2, 0], [3, 3, 3, 3], [0, 0, 5, 5], [1, 2, 1, 2], [8, 7, 8, 0], [4, 4, 0, 3]])
    y = torch.randn(B, 4, 2, dtype=torch.float64)
    check(model, tokens, y, free_address)


@pytest.mark.parametrize(
    "norm",
    [lambda: nn.LayerNorm(5), lambda: nn.LayerNorm(5, bias=False), lambda: nn.RMSNorm(5), lambda: nn.RMSNorm(5, eps=1e-3)],
    ids=["layernorm", "layernorm-nobias", "rmsnorm", "rmsnorm-eps"],
)
@pytest.mark.parametrize("middle", [(), (3,)], ids=["2d", "seq"])
def test_layer_norm_and_rms_norm(free_address: str, norm, middle: tuple[int, ...]) -> None:
    torch.manual_seed(4)
    layer = norm()
    with torch.no_grad():  # non-trivial affine parameters
        layer.weight.uniform_(0.5, 1.5)
        if getattr(layer, "bias", None) is not None:
            layer.bias.uniform_(-0.5, 0.5)
    model = nn.Sequential(nn.Linear(4, 5), layer, nn.Tanh(), nn.Linear(5, 2)).double()
    x, y = data(*middle, 4, out=(*middle, 2))
    check(model, x, y, free_address)


def test_layer_norm_over_two_trailing_dims(free_address: str) -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 6), nn.Unflatten(-1, (2, 3)), nn.LayerNorm((2, 3)), nn.Flatten(-2), nn.Linear(6, 2))
    model = model.double()
    x, y = data(3, 4, out=(3, 2))
    check(model, x, y, free_address)


class Reused(nn.Module):
    """One Linear applied twice: each example's contribution is the sum of both calls' terms."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.inner(torch.tanh(self.norm(self.inner(x)))))


def test_a_module_called_twice_per_forward(free_address: str) -> None:
    torch.manual_seed(6)
    model = Reused().double()
    x, y = data(4, out=(4,))
    check(model, x, y, free_address)


def test_in_place_activation_after_a_linear(free_address: str) -> None:
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(7, 5), nn.ReLU(inplace=True), nn.Linear(5, 3)).double()
    x, y = data(7, out=(3,))
    check(model, x, y, free_address)


def test_cross_entropy_classifier_float32_close_to_float64(free_address: str) -> None:
    """Training dtype float32: the sums stay within float32 round-off of the float64 truth."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Linear(16, 5))
    x = torch.randn(B, 7)
    y = torch.randint(0, 5, (B,))
    exact = exact_sums(model.double(), x.double(), y, 1 / B, loss=lambda o, t: F.cross_entropy(o, t))
    model.float()
    measured, _ = measure_one_step(model, x, y, free_address, loss=lambda o, t: F.cross_entropy(o, t))
    assert_sums_match(measured, exact, rel=1e-5)
