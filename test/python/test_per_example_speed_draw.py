"""Where the layers' terms go to the worker, a sampled row's draw goes there too (it reads the whole first δ, which the
backward need not wait for), and draws the same sample as inline: one micro-batch or several, in their order."""
from __future__ import annotations

import math

import pytest
import torch

from noisescope._per_example import Sampler
from per_example_support import measure_one_step, regression_loss
from test_hook_support import watch_and_record
from test_per_example_sampled import S, _x, sequence_mlp


def _in_backward_when_drawn(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Per draw: whether it ran inside a backward pass (an autograd graph task)."""
    inside: list[bool] = []
    draw = Sampler.draw

    def recorded(self, *args, **kwargs):
        inside.append(torch._C._current_graph_task_id() != -1)
        return draw(self, *args, **kwargs)

    monkeypatch.setattr(Sampler, "draw", recorded)
    return inside


def test_the_worker_draws_outside_the_backward_the_same_sample_as_inline(monkeypatch: pytest.MonkeyPatch, free_address: str) -> None:
    inside = _in_backward_when_drawn(monkeypatch)
    sums, draws = {}, {}
    x, y = _x(4, 7), torch.randn(8, 4, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for overlap in (False, True):
        sums[overlap], _ = measure_one_step(sequence_mlp(), x, y, free_address, source="per-example", overlap=overlap, per_example_sample=S)
        draws[overlap] = inside[-1]
    assert len(inside) == 2 and draws == {False: True, True: False}  # inline in the first δ's hook; the worker's after it
    assert sums[True].keys() == sums[False].keys() and len(sums[True]) == 4
    for name, value in sums[True].items():
        assert math.isclose(sums[False][name], value, rel_tol=1e-12), (name, sums[False][name], value)


def test_several_micro_batches_draw_in_their_order_on_the_worker(free_address: str) -> None:
    x = _x(4, 7)
    y = torch.randn(8, 4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sums = {}
    for overlap in (False, True):
        model = sequence_mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        ns, records = watch_and_record(model, optimizer, free_address, source="per-example", per_example_sample=S)
        ns._meter._per_example.overlap.enabled = overlap
        for xs, ys in zip(x.chunk(2), y.chunk(2)):  # two micro-batches: a draw each, from the one seeded stream
            (torch.stack([regression_loss(o, t) for o, t in zip(model(xs), ys)]).mean() / 2).backward()
        optimizer.step()
        ns.remove()
        assert len(records) == 1 and len(records[0].per_example_sums) == 2
        sums[overlap] = records[0].per_example_sums
    for inline_row, worker_row in zip(sums[False], sums[True]):
        assert len(inline_row) == 4 and all(v is not None for v in worker_row)
        for a, b in zip(inline_row, worker_row):
            assert math.isclose(a, b, rel_tol=1e-12), (inline_row, worker_row)
    assert sums[False][0] != sums[False][1]  # two different draws (a swapped order would show)
