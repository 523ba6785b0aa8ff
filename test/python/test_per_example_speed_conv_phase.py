"""The phase form of a convolution's weight term (the windows' inner products summed from the input's phase Grams, no
unfold) equals each example's gradient's squared norm, computed one example at a time by autograd, and the
materialised form, to 1e-12 in float64 — Conv1d and Conv2d, strides below, equal to and above the kernel, uneven
padding of every mode, groups, several chunks; "auto" takes it only where its multiply-adds are the fewest."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from noisescope import _per_example_math as pem
from per_example_support import exact_sums, measure_one_step

CONVS = [
    (nn.Conv2d(64, 64, 3, stride=2, padding=1), (16, 16)),  # the benchmark CNN's last conv
    (nn.Conv2d(5, 4, (3, 2), stride=(2, 3), padding=(1, 2)), (9, 11)),
    (nn.Conv2d(6, 9, 3, padding=1, groups=3), (7, 6)),
    (nn.Conv2d(4, 3, 5, stride=3, padding=2, padding_mode="circular"), (10, 8)),
    (nn.Conv2d(4, 3, 3, padding="same", padding_mode="reflect", bias=False), (6, 7)),
    (nn.Conv2d(4, 3, (2, 4), padding="same", padding_mode="replicate"), (5, 6)),  # 'same' padded unevenly
    (nn.Conv2d(3, 2, 2, stride=2, bias=False), (7, 9)),  # the last row and column read by no window
    (nn.Conv2d(3, 2, 1, stride=(1, 2)), (4, 5)),
    (nn.Conv1d(6, 4, 5, stride=2, padding=2), (17,)),
    (nn.Conv1d(4, 5, 3, stride=4, padding=3, padding_mode="reflect"), (11,)),
]
IDS = [f"{type(conv).__name__}-{i}" for i, (conv, _) in enumerate(CONVS)]


def _autograd_weight_term(conv: nn.Module, x: torch.Tensor, delta: torch.Tensor) -> float:
    total = 0.0
    for xe, de in zip(x, delta):
        (grad,) = torch.autograd.grad(conv(xe.unsqueeze(0)), conv.weight, de.unsqueeze(0))
        total += float(grad.square().sum())
    return total


def _made(conv: nn.Module, spatial: tuple[int, ...], batch: int = 5) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(5)
    conv = conv.double()
    x = torch.randn(batch, conv.in_channels, *spatial, dtype=torch.float64)
    return conv, x, torch.randn_like(conv(x))


@pytest.mark.parametrize("conv, spatial", CONVS, ids=IDS)
def test_phase_form_equals_autograd_and_the_materialised_form(conv: nn.Module, spatial: tuple[int, ...]) -> None:
    conv, x, delta = _made(conv, spatial)
    weight, bias = pem.conv(conv, [(x, delta)], "phase")
    want_weight, want_bias = pem.conv(conv, [(x, delta)], "materialise")
    assert weight.dtype == torch.float64 and weight.dim() == 0
    assert float(weight) == pytest.approx(_autograd_weight_term(conv, x, delta), rel=1e-12)
    assert float(weight) == pytest.approx(float(want_weight), rel=1e-12)
    assert (bias is None) == (conv.bias is None)
    if bias is not None:
        assert float(bias) == float(want_bias)  # the same pass over δ


def test_phase_form_in_several_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    conv, x, delta = _made(*CONVS[1][:2], batch=7)
    whole = pem.conv(conv, [(x, delta)], "phase")[0]
    _, elements = pem._phase_plan(conv, tuple(delta.shape[2:]))
    monkeypatch.setattr(pem, "CHUNK_ELEMENTS", 2 * elements)  # chunks of 2, 2, 2, 1 examples
    assert len(pem._chunks(7, elements)) == 4
    assert float(pem.conv(conv, [(x, delta)], "phase")[0]) == pytest.approx(float(whole), rel=1e-12)


def test_auto_takes_the_phase_form_only_where_it_is_cheapest() -> None:
    def form(conv: nn.Module, spatial: tuple[int, ...], calls: int = 1, batch: int = 32) -> str:
        x = torch.zeros(batch, conv.in_channels, *spatial)
        with torch.no_grad():
            return pem._conv_form(conv, [(x, conv(x))] * calls)

    # The benchmark CNN: the stride-2 conv to 8×8 is cheaper by phase Grams (1.7 M vs 2.4 M multiply-adds an example);
    # the 3-channel input conv and the 32-channel conv to 16×16 are not (their phase grids are larger than their
    # windows' shared pixels save).
    assert form(nn.Conv2d(64, 64, 3, stride=2, padding=1), (16, 16)) == "phase"
    assert form(nn.Conv2d(3, 32, 3, padding=1), (32, 32)) == "materialise"
    assert form(nn.Conv2d(32, 64, 3, stride=2, padding=1), (32, 32)) == "materialise"
    assert form(nn.Conv2d(256, 256, 3, padding=1), (4, 4)) == "phase"  # a plain Gram's 16²·2,560 before
    # A few examples (a small sample) do not pay for its extra ops: 0.6 M multiply-adds saved an example on the last conv.
    assert form(nn.Conv2d(64, 64, 3, stride=2, padding=1), (16, 16), batch=4) == "materialise"
    assert form(nn.Conv2d(64, 64, 3, stride=2, padding=1), (16, 16), batch=5) == "phase"
    # Two calls (the terms of their sum need cross-call Grams) or a dilation: never.
    assert form(nn.Conv2d(64, 64, 3, stride=2, padding=1), (16, 16), calls=2) != "phase"
    assert form(nn.Conv2d(64, 64, 3, stride=2, padding=2, dilation=2), (16, 16)) != "phase"
    with pytest.raises(ValueError, match="phase form"):
        pem.conv(nn.Conv2d(2, 2, 3, dilation=2), [(torch.zeros(1, 2, 6, 6), torch.zeros(1, 2, 2, 2))], "phase")


def test_through_watch_a_conv_the_phase_form_takes_equals_torch_func(free_address: str) -> None:
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, stride=2, padding=1), nn.Tanh(), nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.Tanh(),
        nn.Flatten(), nn.Linear(64 * 64, 3),
    ).double()
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    y = torch.randn(6, 3, dtype=torch.float64)
    with torch.no_grad():
        inner = model[:2](x)
        assert pem._conv_form(model[2], [(inner, model[2](inner))]) == "phase"
    exact = exact_sums(model, x, y, 1 / 6)
    measured, _ = measure_one_step(model, x, y, free_address, source="per-example")
    assert measured.keys() == exact.keys()
    for name, want in exact.items():
        assert measured[name] == pytest.approx(want, rel=1e-10), name
