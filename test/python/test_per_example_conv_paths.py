"""Both ways of making per-example convolution weight gradients are exact, whichever the first-use timing picks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from noisescope import _per_example_math as pem

CONVS = [
    (nn.Conv2d, dict(in_channels=3, out_channels=5, kernel_size=3, stride=(2, 1), padding=(1, 2)), (7, 6)),
    (nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=2, dilation=(2, 1), groups=2), (9, 8)),
    (nn.Conv2d, dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4), (5, 5)),
    (nn.Conv2d, dict(in_channels=2, out_channels=3, kernel_size=3, padding="same", padding_mode="reflect"), (6, 7)),
    (nn.Conv1d, dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1), (9,)),
    (nn.Conv1d, dict(in_channels=4, out_channels=6, kernel_size=2, padding="same", padding_mode="circular", groups=2, dilation=3), (8,)),
]


def per_example_reference(conv: nn.Module, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Each example's weight gradient by its own backward."""
    rows = [torch.autograd.grad((conv(x[e : e + 1]) * delta[e : e + 1]).sum(), conv.weight)[0] for e in range(x.shape[0])]
    return torch.stack(rows)


@pytest.mark.parametrize("path", ["grouped", "columns"])
@pytest.mark.parametrize("kind, options, spatial", CONVS, ids=[f"{k.__name__}-{i}" for i, (k, _, _) in enumerate(CONVS)])
def test_each_path_gives_the_per_example_weight_gradients(monkeypatch: pytest.MonkeyPatch, path: str, kind, options, spatial) -> None:
    torch.manual_seed(4)
    conv = kind(**options).double()
    x = torch.randn(5, options["in_channels"], *spatial, dtype=torch.float64)
    delta = torch.randn_like(conv(x))
    chosen: list[str] = []

    def only(key: tuple, candidates: dict) -> torch.Tensor:
        chosen.append(path)
        return candidates[path]()

    monkeypatch.setattr(pem, "fastest", only)
    grads = pem._per_example_conv_grads(conv, x, delta)
    assert chosen == [path]
    torch.testing.assert_close(grads, per_example_reference(conv, x, delta), rtol=1e-10, atol=1e-12)


def test_the_first_use_of_a_shape_times_both_and_keeps_one() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    delta = torch.randn_like(conv(x))
    before = set(pem._FASTEST)
    first = pem._per_example_conv_grads(conv, x, delta)
    (key,) = set(pem._FASTEST) - before
    assert pem._FASTEST[key] in ("grouped", "columns")
    torch.testing.assert_close(pem._per_example_conv_grads(conv, x, delta), first, rtol=1e-12, atol=0)


def test_past_the_shapes_it_times_a_new_shape_runs_the_first_way_untimed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pem, "_FASTEST", {("filler", i): "columns" for i in range(pem._FASTEST_MOST)})
    runs: list[str] = []
    result = pem.fastest(("new",), {"grouped": lambda: runs.append("grouped") or torch.zeros(1), "columns": lambda: runs.append("columns") or torch.ones(1)})
    assert runs == ["grouped"] and result.item() == 0 and ("new",) not in pem._FASTEST
