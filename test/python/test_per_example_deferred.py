"""Sampled per-example terms computed inline wait for the step's end: the drawn rows are selected in the backward
(the layer's full input and δ go at once) and the terms run one layer after another at the step's end."""
from __future__ import annotations

import math

import torch

from per_example_support import measure_one_step, regression_loss
from test_hook_support import watch_and_record
from test_per_example_sampled import CASES, S


def _conv_model_and_data() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    make, inputs, *_ = CASES["conv2d-stride-pad-materialise"]
    model, x = make(), inputs()
    y = torch.randn(model(x).shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    return model, x, y


def test_inline_sampled_terms_hold_only_the_drawn_rows_until_the_step_ends(free_address: str) -> None:
    model, x, y = _conv_model_and_data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ns, records = watch_and_record(model, optimizer, free_address, source="per-example", per_example_sample=S)
    per_example = ns._meter._per_example
    per_example.overlap.enabled = False
    torch.stack([regression_loss(o, t) for o, t in zip(model(x), y)]).mean().backward()
    waiting = list(per_example._deferred)
    # The convolution waits; the head (a Linear on [B, d] rows, exact: it costs less than selecting) had its row norms
    # taken at once (its sums come at the step's end, in one op with every row Linear's).
    assert [type(module).__name__ for _, module, _ in waiting] == ["Conv2d"]
    (row, _, calls), = waiting
    assert all(c.x.shape[0] == S and c.delta.shape[0] == S for c in calls)
    conv_weight, conv_bias = per_example._modules[model[0]]
    head_weight, _ = per_example._modules[model[3]]
    assert row.sums[conv_weight] is None and row.sums[conv_bias] is None and [e[0] for e in row.linear] == [head_weight]
    optimizer.step()
    ns.remove()
    assert not per_example._deferred
    assert len(records) == 1 and all(v is not None and v > 0 for v in records[0].per_example_sums[0])


def test_deferred_terms_equal_the_terms_the_worker_computes_in_the_backward(free_address: str) -> None:
    """Same draw (a new watch starts from the sampler's seed), same terms: inline at the step's end or on the worker."""
    sums = {}
    for overlap in (False, True):
        model, x, y = _conv_model_and_data()
        sums[overlap], _ = measure_one_step(model, x, y, free_address, source="per-example", overlap=overlap, per_example_sample=S)
    assert sums[False].keys() == sums[True].keys() and len(sums[False]) == 4
    for name, value in sums[True].items():
        assert math.isclose(sums[False][name], value, rel_tol=1e-12), (name, sums[False][name], value)
