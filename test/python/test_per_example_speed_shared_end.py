"""At the step's end the training thread shares the worker's last layers (per_example_share): the sums are bitwise those
of the worker alone (parts combined in their order) and equal to inline to 1e-12, exact and sampled; an error in the
part the training thread ran switches the hook off and leaves training bitwise unchanged."""
from __future__ import annotations

import copy
import math
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


_CONV_GRADS = pem._per_example_conv_grads


def _split_small(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's layers are small: split them as the benchmark CNN's are (4 parts on the worker)."""
    monkeypatch.setattr(share, "SPLIT_ELEMENTS", 1024)


def _join_at_the_end(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> threading.Event:
    """The worker's first conv part waits (5 s at most) until the training thread has run a part, so the step's end
    always shares; with `fail`, the training thread's part raises."""
    helped = threading.Event()
    real = _CONV_GRADS

    def joined(conv, x, delta):
        if threading.current_thread() is threading.main_thread():
            helped.set()
            if fail:
                raise RuntimeError("an error in the part the training thread shared")
        elif not helped.is_set():
            helped.wait(5.0)
        return real(conv, x, delta)

    monkeypatch.setattr(pem, "_per_example_conv_grads", joined)
    return helped


@pytest.mark.parametrize("sample", [None, 0.5])
def test_shared_step_end_sums_equal_the_worker_alone_and_inline(monkeypatch: pytest.MonkeyPatch, free_address: str, sample) -> None:
    _split_small(monkeypatch)
    x, y = _data()
    # Once first: every part's shape gets its kernel timed (pem.fastest), so the runs compared use the same kernels.
    _join_at_the_end(monkeypatch)
    measure_one_step(small_cnn(), x, y, free_address, overlap=True, per_example_sample=sample)
    sums = {}
    with monkeypatch.context() as alone:
        alone.setattr(share.Board, "help", lambda self: False)
        sums["worker"], _ = measure_one_step(small_cnn(), x, y, free_address, overlap=True, per_example_sample=sample)
    sums["inline"], _ = measure_one_step(small_cnn(), x, y, free_address, overlap=False, per_example_sample=sample)
    helped = _join_at_the_end(monkeypatch)
    sums["shared"], _ = measure_one_step(small_cnn(), x, y, free_address, overlap=True, per_example_sample=sample)
    assert helped.is_set()  # the training thread ran a part
    assert len(sums["shared"]) == 6 and sums["shared"] == sums["worker"]  # bitwise: parts added in their order
    for name, value in sums["shared"].items():
        assert math.isclose(value, sums["inline"][name], rel_tol=1e-12), (name, value, sums["inline"][name])
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
