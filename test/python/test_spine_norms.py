"""The CPU norms every path shares: `_grad_sq_norms` (the backward end's read of .grad and held gradients) and
`_sq_norm_alone` (a fresh step's norm taken in its gradient's hook) must give bitwise the same figure for the
same tensor, since a step's figures mix the two; for small fp32/fp64 tensors that figure is what
`torch._foreach_norm` gives (the fused call they replaced), squared."""
from __future__ import annotations

import torch

from noisescope._meter import _SMALL, _grad_sq_norms, _sq_norm, _sq_norm_alone


def tensors() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    out = []
    for dtype in (torch.float32, torch.float64):
        for shape in ((1,), (10,), (512,), (5120,), (37, 29), (_SMALL,), (3, 4, 5, 6)):
            out.append((torch.randn(shape, generator=g, dtype=dtype) * 3).requires_grad_(False))
        out.append(torch.randn(64, 48, generator=g, dtype=dtype).t())  # not contiguous
        out.append(torch.randn(2, 3, 8, 8, generator=g, dtype=dtype).to(memory_format=torch.channels_last))
    return out


def test_small_cpu_norms_are_the_fused_norms_bitwise_on_every_path() -> None:
    small = tensors()
    fused = [n * n for n in torch.stack(torch._foreach_norm(small)).tolist()]  # the figure before
    assert _grad_sq_norms(small) == fused
    assert [_sq_norm_alone(t) for t in small] == fused
    assert _grad_sq_norms([None, small[2], None]) == [None, fused[2], None]


def test_large_and_other_dtype_cpu_norms_are_sq_norms_on_every_path() -> None:
    g = torch.Generator().manual_seed(8)
    large = [torch.randn(_SMALL + 1, generator=g), torch.randn(401408, generator=g), torch.randn(300, 256, generator=g)]
    others = [torch.randn(1000, generator=g).to(torch.bfloat16), torch.randn(70000, generator=g).half()]
    every = large + others + tensors()
    by_path = _grad_sq_norms(every)
    assert by_path[: len(large) + len(others)] == [_sq_norm(t) for t in large + others]
    assert by_path == [_sq_norm_alone(t) for t in every]
    exact = [float(t.double().square().sum()) for t in every]
    assert all(abs(a - b) <= 1e-5 * b for a, b in zip(by_path, exact))
