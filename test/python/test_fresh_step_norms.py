"""A one-micro-batch step whose `.grad` starts None takes its norms in one read of `.grad` (S_1 = h_1: no second
pass over the gradients, no reference held in the hooks). Those figures must be bitwise what reading `.grad` at
the step gives; and a step whose `.grad` did not start None (the user never called zero_grad) must not take that
shortcut: its accumulated norm is still `.grad`'s, its micro-batch norm the new gradient's alone.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from noisescope._meter import _grad_sq_norms
from test_hook_support import assert_close, watch_and_record


def make_model() -> nn.Module:
    torch.manual_seed(3)
    # 300·256 weights: above the fused norm's small-gradient size (2^16), so both read paths are used
    return nn.Sequential(nn.Linear(300, 256), nn.Tanh(), nn.Linear(256, 10))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(32, 300, generator=g), torch.randint(0, 10, (32,), generator=g)


def test_fresh_step_norms_are_bitwise_those_of_grad_and_a_step_without_zero_grad_reads_grad(free_address, caplog) -> None:
    model = make_model()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05)
    caplog.set_level(logging.ERROR, logger="noisescope")  # the one-scale warning: expected here
    ns, records = watch_and_record(model, optimizer, free_address, source="accumulation")
    at_step: list[list[float]] = []  # |.grad|² per layer as the optimizer step finds it, read without the hook
    new_grad: list[list[float]] = []  # |this step's own gradient|², float64
    for step in range(3):
        if step != 1:
            optimizer.zero_grad(set_to_none=True)  # step 1: the user forgot; .grad still holds step 0's
        before = [p.grad.double().clone() if p.grad is not None else None for p in params]
        x, y = batch(step)
        F.cross_entropy(model(x), y).backward()
        at_step.append(_grad_sq_norms([p.grad for p in params]))  # type: ignore[arg-type]
        new_grad.append(
            [float(((p.grad.double() - b) if b is not None else p.grad.double()).square().sum()) for p, b in zip(params, before)]
        )
        optimizer.step()
    ns.remove()

    assert [r.step for r in records] == [0, 1, 2] and not any(r.skipped for r in records)
    for record in records:
        assert record.accumulated_sq_norms == tuple(at_step[record.step]), f"step {record.step}: accumulated"
    for step in (0, 2):  # fresh: the micro-batch's norms are the same read, bitwise
        assert records[step].micro_sq_norms == (tuple(at_step[step]),), f"step {step}: micro-batch"
    # Not fresh: the micro-batch norm is the new gradient's (taken in the hooks), not .grad's
    for i, (micro, accumulated) in enumerate(zip(records[1].micro_sq_norms[0], records[1].accumulated_sq_norms)):
        assert_close(micro, new_grad[1][i], 1e-5, f"layer {i}: step 1's own gradient")
        assert abs(micro - accumulated) > 1e-3 * accumulated, f"layer {i}: step 1 read .grad for its micro-batch"
