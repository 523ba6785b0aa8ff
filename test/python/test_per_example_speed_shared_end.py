"""At the step's end the training thread shares the worker's last layer's unfold chunks (per_example_share): the sums
are bitwise those of the worker alone and of inline, exact and sampled; an error in the chunk the training thread ran
switches the hook off and leaves training bitwise unchanged."""
from __future__ import annotations

import copy
import threading

import pytest
import torch
from torch import nn

from noisescope import _per_example_math as pem
from noisescope import _per_example_share as share
from per_example_support import assert_sums_match, exact_sums, measure_one_step, regression_loss
from test_hook_support import parameters_of, watch_and_record


def small_cnn() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Tanh(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 3),
    ).double()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return torch.randn(8, 3, 8, 8, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64)


_WINDOWS = pem._windows


def _split_small(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's layers are small: unfolded a few examples at a time, as the benchmark CNN's are, by unfold + bmm."""
    monkeypatch.setattr(pem, "CACHED_ELEMENTS", 4000)  # the input conv: 1,728 unfolded elements an example
    monkeypatch.setattr(pem, "fastest", lambda key, candidates: candidates["columns"]())


def _join_at_the_end(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> threading.Event:
    """The worker's first unfold chunk waits (5 s at most) until the training thread has run one, so the step's end
    always shares; with `fail`, the training thread's chunk raises."""
    helped = threading.Event()

    def joined(*args):
        if threading.current_thread() is threading.main_thread():
            helped.set()
            if fail:
                raise RuntimeError("an error in the chunk the training thread shared")
        elif not helped.is_set():
            helped.wait(5.0)
        return _WINDOWS(*args)

    monkeypatch.setattr(pem, "_windows", joined)
    return helped


@pytest.mark.parametrize("sample", [None, 0.5])
def test_shared_step_end_sums_equal_the_worker_alone_and_inline(monkeypatch: pytest.MonkeyPatch, free_address: str, sample) -> None:
    _split_small(monkeypatch)
    x, y = _data()
    sums = {}
    with monkeypatch.context() as alone:
        alone.setattr(share.Board, "help", lambda self: False)
        sums["worker"], _ = measure_one_step(small_cnn(), x, y, free_address, overlap=True, per_example_sample=sample)
    sums["inline"], _ = measure_one_step(small_cnn(), x, y, free_address, overlap=False, per_example_sample=sample)
    helped = _join_at_the_end(monkeypatch)
    sums["shared"], _ = measure_one_step(small_cnn(), x, y, free_address, overlap=True, per_example_sample=sample)
    assert helped.is_set()  # the training thread ran a chunk
    assert len(sums["shared"]) == 6 and sums["shared"] == sums["worker"] == sums["inline"]  # bitwise: the same chunks
    if sample is None:
        assert_sums_match(sums["shared"], exact_sums(small_cnn(), x, y, 1 / 8))


def test_an_error_in_the_shared_part_switches_the_hook_off_and_training_is_unchanged(
    monkeypatch: pytest.MonkeyPatch, free_address: str
) -> None:
    _split_small(monkeypatch)
    helped = _join_at_the_end(monkeypatch, fail=True)

    def train(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for step in range(3):
            g = torch.Generator().manual_seed(step)
            x, y = torch.randn(8, 3, 8, 8, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64)
            optimizer.zero_grad()
            torch.stack([regression_loss(o, t) for o, t in zip(model(x), y)]).mean().backward()
            optimizer.step()

    plain = small_cnn()
    watched = copy.deepcopy(plain)
    train(plain, torch.optim.SGD(plain.parameters(), lr=0.05, momentum=0.9))
    optimizer = torch.optim.SGD(watched.parameters(), lr=0.05, momentum=0.9)
    ns, records = watch_and_record(watched, optimizer, free_address, source="per-example")
    ns._meter._per_example.overlap.enabled = True
    train(watched, optimizer)
    tripped = ns._guard.tripped
    ns.remove()
    assert helped.is_set() and tripped
    assert all(not r.per_example_sums for r in records)  # the failed step's sums were not sent
    for a, b in zip(parameters_of(plain), parameters_of(watched)):
        assert torch.equal(a, b)
