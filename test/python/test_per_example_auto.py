"""source="auto" picks the cheapest batch scale that exists: per-example norms only where nothing cheaper does.

On one process auto takes per-example norms only when they cover every parameter (and no BatchNorm),
and then only on measured steps expected to be one micro-batch; a step that accumulates gets its
second scale from the micro-batches, with no per-example hooks or sums.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import noisescope
from noisescope import _per_example
from conftest import Sidecar
from test_hook_adaptive import MICRO, deliver_at, train_adaptive
from test_hook_support import (
    Loop,
    advice,
    make_model,
    make_optimizer,
    micro_batch,
    parameters_of,
    wait_connected,
    wait_for_events,
    watch_and_record,
)
from test_per_example_watch import Partly


def count_per_example_terms(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the per-example computations (one per covered module and micro-batch); the math still runs."""
    calls = [0]
    real = _per_example.PerExample._dispatch

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(_per_example.PerExample, "_dispatch", counted)
    return calls


def module_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_auto_with_accumulation_does_no_per_example_work_after_the_first_step_and_estimates_from_it(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    terms = count_per_example_terms(monkeypatch)
    loop = Loop(steps=8, sizes=(8, 8, 8, 8))
    model = make_model()
    plain = copy.deepcopy(model)
    loop.run(plain, make_optimizer(plain))
    optimizer = make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, sidecar.address, run="auto-acc", dataset_size=4096)
    assert ns._sender._info.per_example  # every parameter covered: auto may add it
    wait_connected(ns)
    hooks: list[tuple[int, bool]] = []
    terms_at_start: list[int] = []

    def on_step_start(step: int) -> None:
        hooks.append((module_hooks(model), ns._meter._per_example.armed))
        terms_at_start.append(terms[0])

    loop.run(model, optimizer, on_step_start=on_step_start)
    ns.remove()
    # No measured step before the first: armed for it; it has 4 micro-batches, so never again.
    assert hooks == [(4, True)] + [(0, False)] * (loop.steps - 1)
    # Step 0 stopped at its second backward: micro-batch 0's 4 covered modules, at most a few of micro-batch 1's.
    assert 4 <= terms[0] < 8 and terms_at_start[1:] == [terms[0]] * (loop.steps - 1)
    assert len(records) == loop.steps
    assert all(not r.skipped and r.per_example_sums == () and len(r.micro_sq_norms) == 4 for r in records)
    steps = wait_for_events(sidecar, "step", "auto-acc", loop.steps)
    assert {e["source"] for e in steps} == {"accumulation"} and {e["levels"] for e in steps} == {2}
    assert steps[-1]["smoothed"] and steps[-1]["smoothed"]["bSimple"] > 0
    assert ns.stats.refusals == 0
    for a, b in zip(parameters_of(plain), parameters_of(model)):
        assert torch.equal(a, b)  # training bitwise unchanged


def test_auto_with_one_micro_batch_measures_per_example_on_every_measured_step(free_address: str) -> None:
    loop = Loop(steps=7, sizes=(8,))
    model = make_model()
    optimizer = make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, free_address, every=2)
    armed: list[bool] = []
    loop.run(model, optimizer, on_step_start=lambda step: armed.append(ns._meter._per_example.armed))
    ns.remove()
    assert armed == [True, False, True, False, True, False, True]  # hooks only on measured steps
    assert [r.step for r in records] == [0, 2, 4, 6]
    assert all(len(r.per_example_sums) == 1 and all(v > 0 for v in r.per_example_sums[0]) for r in records)


def test_auto_follows_the_micro_batch_count_and_the_sidecar_takes_steps_with_and_without_sums(
    sidecar: Sidecar,
) -> None:
    sizes = [(16,), (16,), (4, 4, 4, 4), (4, 4, 4, 4), (16,), (16,)]
    model = make_model()
    optimizer = make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, sidecar.address, run="auto-switch")
    wait_connected(ns)
    armed: list[bool] = []
    for step, step_sizes in enumerate(sizes):
        armed.append(ns._meter._per_example.armed)
        Loop(steps=1, sizes=step_sizes).run(model, optimizer)
    ns.remove()
    # Step 2 was armed (step 1 had one micro-batch) but accumulates: its sums are dropped. Step 4 follows
    # a step of 4, so it runs without them; step 5 follows one of 1 and has them again.
    assert armed == [True, True, True, False, False, True]
    assert [len(r.per_example_sums) for r in records] == [1, 1, 0, 0, 0, 1]
    assert not any(r.skipped for r in records)
    events = wait_for_events(sidecar, "step", "auto-switch", len(sizes))
    assert [e["source"] for e in events] == ["per-example", "per-example", "accumulation", "accumulation", "none", "per-example"]
    assert ns.stats.refusals == 0


def train_partly(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, k: int) -> list[int]:
    """`steps` optimizer steps of `k` micro-batches; returns the module forward hooks at each step's start."""
    hooks: list[int] = []
    for step in range(steps):
        hooks.append(module_hooks(model))
        for j in range(k):
            tokens = torch.randint(0, 10, (4, 5), generator=torch.Generator().manual_seed(step * k + j))
            (model(tokens).square().mean() / k).backward()
        optimizer.step()
        optimizer.zero_grad()
    return hooks


def test_auto_on_a_model_per_example_cannot_fully_cover_uses_accumulation_over_every_parameter(
    free_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = Partly()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.INFO, logger="noisescope"):
        ns, records = watch_and_record(model, optimizer, free_address)
    info = ns._sender._info
    assert not info.per_example and ns._meter._per_example is None
    assert [layer.name for layer in info.layers] == [n for n, _ in model.named_parameters()]
    assert list(info.uncovered_layers) == []
    lines = [r.getMessage() for r in caplog.records if "batch-scale source" in r.getMessage()]
    assert len(lines) == 1
    assert "gradient-accumulation micro-batches and ranks (source='auto')" in lines[0]
    assert "gru.weight_hh_l0 (GRU)" in lines[0] and "temperature (Partly)" in lines[0]
    assert "attn." not in lines[0] and "embed.weight" not in lines[0]  # covered: the attention, the tied embedding
    assert "source='per-example' forces them over the covered fraction" in lines[0]
    with caplog.at_level(logging.WARNING, logger="noisescope"):
        hooks = train_partly(model, optimizer, steps=3, k=2) + train_partly(model, optimizer, steps=1, k=1)
    ns.remove()
    assert hooks == [0, 0, 0, 0]
    assert [len(r.micro_sq_norms) for r in records] == [2, 2, 2, 1]
    assert all(not r.skipped and r.per_example_sums == () for r in records)
    assert all(len(row) == len(info.layers) for r in records for row in r.micro_sq_norms)
    # A step of one micro-batch has no second scale here; the warning says how to get one.
    warnings = [r.getMessage() for r in caplog.records if "no noise-scale estimate" in r.getMessage()]
    assert len(warnings) == 1 and "source='per-example' gives one over the" in warnings[0]


@pytest.mark.parametrize("source", ["auto", "per-example"])
def test_the_adaptive_helper_changing_the_count_keeps_every_step_measured(free_address: str, source: str) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, free_address, source=source)
    acc = ns.adaptive_accumulation(steps=2, micro_batch=MICRO)
    up = advice(action="increase", current_global_batch=2 * MICRO, recommended_global_batch=5 * MICRO,
                micro_batch=MICRO, accumulation_steps=5)
    down = advice(action="decrease", current_global_batch=5 * MICRO, recommended_global_batch=2 * MICRO,
                  micro_batch=MICRO, accumulation_steps=2, sequence=2)
    armed: list[bool] = []

    def on_step_start(step: int) -> None:
        armed.append(ns._meter._per_example.armed)
        deliver_at(ns, {1: up, 3: down})(step)

    counts = train_adaptive(model, optimizer, acc, 6, on_step_start=on_step_start)
    ns.remove()
    assert counts == [2, 2, 5, 5, 2, 2]
    assert [(r.step, len(r.micro_examples), r.skipped) for r in records] == [
        (step, k, False) for step, k in enumerate(counts)
    ]
    if source == "auto":  # the helper set 2 before the first step: per-example was never armed
        assert armed == [False] * 6 and all(r.per_example_sums == () for r in records)
    else:
        assert armed == [True] * 6 and [len(r.per_example_sums) for r in records] == counts
