"""Exact per-example sums from torch.func, and a one-step measurement through watch(), for the per-example tests."""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

import noisescope


def regression_loss(out: Tensor, target: Tensor) -> Tensor:
    """Per-example loss: squared error summed over the example's outputs (δ then depends on the example)."""
    return (out - target).square().sum()


def exact_sums(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    scale: float,
    loss: Callable[[Tensor, Tensor], Tensor] = regression_loss,
) -> dict[str, float]:
    """Σ_e |scale·∇ℓ_e|² per parameter: the contribution of example e to .grad when the loss is scale·Σ_e ℓ_e."""
    return {n: float(v.sum()) for n, v in exact_per_example(model, inputs, targets, scale, loss).items()}


def exact_per_example(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    scale: float,
    loss: Callable[[Tensor, Tensor], Tensor] = regression_loss,
) -> dict[str, Tensor]:
    """|scale·∇ℓ_e|² per parameter and example e ([B] each), from torch.func per-sample gradients."""
    ref = copy.deepcopy(model)
    params = {n: p.detach() for n, p in ref.named_parameters() if p.requires_grad}
    buffers = dict(ref.named_buffers())

    def one(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return loss(functional_call(ref, {**p, **buffers}, (x.unsqueeze(0),))[0], y)

    grads = vmap(grad(one), in_dims=(None, 0, 0))(params, inputs, targets)
    return {n: (scale * g).reshape(g.shape[0], -1).square().sum(1) for n, g in grads.items()}


def measure_one_step(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    address: str,
    *,
    reduction: str = "mean",
    sequence_form: str = "auto",
    overlap: bool | None = None,
    loss: Callable[[Tensor, Tensor], Tensor] = regression_loss,
    **watch_kwargs,
) -> tuple[dict[str, float], list]:
    """One optimizer step through watch(); returns {parameter name: measured per-example sum} and the records."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ns = noisescope.watch(model, optimizer, address=address, **watch_kwargs)
    records: list = []
    ns._sender.tap = records.append
    if ns._meter is not None and ns._meter._per_example is not None:
        ns._meter._per_example.sequence_form = sequence_form
        ns._meter._per_example.overlap.enabled = overlap
    out = model(inputs)
    per_example = torch.stack([loss(o, t) for o, t in zip(out, targets)])
    total = per_example.mean() if reduction == "mean" else per_example.sum()
    total.backward()
    optimizer.step()
    names = [layer.name for layer in ns._sender._info.layers]
    ns.remove()
    assert len(records) == 1, records
    sums = records[0].per_example_sums
    return (dict(zip(names, sums[0])) if sums else {}), records


def assert_sums_match(measured: dict[str, float], exact: dict[str, float], rel: float = 1e-4) -> None:
    assert measured, "the step carried no per-example sums"
    assert set(measured) == set(exact), (sorted(measured), sorted(exact))
    for name, value in exact.items():
        assert abs(measured[name] - value) <= rel * abs(value), f"{name}: measured {measured[name]!r}, exact {value!r}"
