"""The adaptive accumulation helper: what it does with each recommendation, and the measurement across a change.

Recommendations are handed to the watch as the connection thread hands them (`_on_recommendation`,
with values built like the sidecar's), so each decision is pinned down step by step; the tests
against the real sidecar's advice are in test_hook_recommendations.py.
"""
from __future__ import annotations

import copy
import logging
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import noisescope
from test_hook_support import (
    Loop,
    advice,
    assert_matches_exact,
    exact_norms,
    make_model,
    make_optimizer,
    micro_batch,
    parameters_of,
    watch_and_record,
)

MICRO = 8


def train_adaptive(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    acc: noisescope.AdaptiveAccumulation,
    steps: int,
    *,
    on_step_start: Callable[[int], None] | None = None,
    after_first_backward: Callable[[int], None] | None = None,
) -> list[int]:
    """The loop the helper's docstring shows; returns the micro-batches each step ran."""
    counts = []
    for step in range(steps):
        if on_step_start is not None:
            on_step_start(step)
        j = 0
        while True:
            x, y = micro_batch(step, j, acc.micro_batch)
            (F.cross_entropy(model(x), y) / acc.steps).backward()
            j += 1
            if j == 1 and after_first_backward is not None:
                after_first_backward(step)  # advice arriving in the middle of a step
            if acc.micro_batch_done():
                break
        counts.append(j)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        optimizer.zero_grad()
    return counts


def deliver_at(ns: noisescope.Watch, schedule: dict[int, noisescope.Recommendation]) -> Callable[[int], None]:
    return lambda step: ns._on_recommendation(schedule[step]) if step in schedule else None


@pytest.mark.parametrize("start, to", [(4, 2), (2, 5)], ids=["decrease", "increase"])
def test_a_change_applies_at_the_step_boundary_and_every_step_is_measured_exactly(
    free_address: str, start: int, to: int
) -> None:
    model = make_model()
    reference = copy.deepcopy(model)
    optimizer = make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, free_address)
    acc = ns.adaptive_accumulation(steps=start, micro_batch=MICRO)
    action = "increase" if to > start else "decrease"
    change = advice(
        action=action, current_global_batch=MICRO * start, recommended_global_batch=MICRO * to,
        micro_batch=MICRO, accumulation_steps=to,
    )
    exact: dict[int, tuple[list[list[float]], list[float]]] = {}

    def on_step_start(step: int) -> None:
        exact[step] = exact_norms(reference, model, step, Loop(sizes=(MICRO,) * acc.steps))

    counts = train_adaptive(
        model, optimizer, acc, 5, on_step_start=on_step_start, after_first_backward=deliver_at(ns, {2: change})
    )
    ns.remove()
    assert counts == [start, start, start, to, to]  # advice in the middle of step 2 waits for its end
    assert [(c.step, c.accumulation_steps, c.global_batch, c.previous_global_batch) for c in acc.history] == [
        (3, to, MICRO * to, MICRO * start)
    ]
    assert [r.step for r in records] == [0, 1, 2, 3, 4]
    for record in records:
        micro, accumulated = exact[record.step]
        assert not record.skipped, record.skip_reason
        assert record.micro_examples == (MICRO,) * counts[record.step]
        assert_matches_exact(record, micro, accumulated)


def test_with_every_n_the_meter_expects_the_new_count_at_its_next_measured_step(free_address: str) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, free_address, every=3)
    acc = ns.adaptive_accumulation(steps=4, micro_batch=MICRO)
    down = advice(action="decrease", current_global_batch=4 * MICRO, recommended_global_batch=2 * MICRO,
                  micro_batch=MICRO, accumulation_steps=2)
    train_adaptive(model, optimizer, acc, 7, after_first_backward=deliver_at(ns, {1: down}))
    ns.remove()
    assert [(r.step, len(r.micro_examples), r.skipped) for r in records] == [(0, 4, False), (3, 2, False), (6, 2, False)]


def test_stale_hold_and_opposite_advice_change_nothing(free_address: str) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=free_address)
    acc = ns.adaptive_accumulation(steps=2, micro_batch=MICRO)
    schedule = {
        # made for a batch we no longer run (before a change of ours): stale
        0: advice(sequence=1, action="increase", current_global_batch=3 * MICRO, recommended_global_batch=6 * MICRO,
                  micro_batch=MICRO, accumulation_steps=6),
        1: advice(sequence=2, action="hold", current_global_batch=2 * MICRO, recommended_global_batch=2 * MICRO,
                  micro_batch=MICRO, accumulation_steps=2),
        # "increase" that would shrink the batch: not followed
        2: advice(sequence=3, action="increase", current_global_batch=2 * MICRO, recommended_global_batch=MICRO,
                  micro_batch=MICRO, accumulation_steps=1),
    }
    counts = train_adaptive(model, optimizer, acc, 4, after_first_backward=deliver_at(ns, schedule))
    ns.remove()
    assert counts == [2, 2, 2, 2] and acc.history == []


def test_the_latest_advice_before_a_boundary_wins(free_address: str) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=free_address)
    acc = ns.adaptive_accumulation(steps=2, micro_batch=MICRO)
    up = advice(sequence=1, action="increase", current_global_batch=2 * MICRO, recommended_global_batch=4 * MICRO,
                micro_batch=MICRO, accumulation_steps=4)
    hold = advice(sequence=2, action="hold", current_global_batch=2 * MICRO, recommended_global_batch=2 * MICRO,
                  micro_batch=MICRO, accumulation_steps=2)

    def both(step: int) -> None:
        if step == 1:
            ns._on_recommendation(up)
            ns._on_recommendation(hold)

    counts = train_adaptive(model, optimizer, acc, 3, after_first_backward=both)
    ns.remove()
    assert counts == [2, 2, 2]


def test_another_micro_batch_is_rounded_to_ours_never_below_two_and_within_the_policy(free_address: str) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    policy = noisescope.BatchPolicy(max_batch=7 * MICRO + 3)
    # Accumulation only (with per-example norms one micro-batch per step would be allowed).
    ns = noisescope.watch(model, optimizer, address=free_address, policy=policy, source="accumulation")
    acc = ns.adaptive_accumulation(steps=2, micro_batch=MICRO)
    schedule = {
        # the sidecar advised micro-batch 12 × 4 = 48: with ours (8) that is 6 steps
        0: advice(sequence=1, action="increase", current_global_batch=16, recommended_global_batch=48,
                  micro_batch=12, accumulation_steps=4),
        # 100 examples → 12.5 steps, but max_batch 59 allows 7
        1: advice(sequence=2, action="increase", current_global_batch=48, recommended_global_batch=100,
                  micro_batch=10, accumulation_steps=10),
        # one micro-batch per step would leave no second batch scale: 2
        2: advice(sequence=3, action="decrease", current_global_batch=56, recommended_global_batch=8,
                  micro_batch=MICRO, accumulation_steps=1),
    }
    counts = train_adaptive(model, optimizer, acc, 4, after_first_backward=deliver_at(ns, schedule))
    ns.remove()
    assert counts == [2, 6, 7, 2]
    assert [c.global_batch for c in acc.history] == [48, 56, 16]


def test_the_learning_rate_hint_scales_every_group_and_the_schedulers_base_lrs(free_address: str) -> None:
    model = make_model()
    optimizer = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 0.1}, {"params": list(model.parameters())[2:]}], lr=0.05
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    ns = noisescope.watch(model, optimizer, address=free_address)
    acc = ns.adaptive_accumulation(steps=2, micro_batch=MICRO, apply_lr_hint=True, scheduler=scheduler)
    hint = noisescope.LearningRateHint(current_lr=0.1, suggested_lr=0.2, rule="linear", note="heuristic")
    up = advice(action="increase", current_global_batch=16, recommended_global_batch=32, micro_batch=MICRO,
                accumulation_steps=4, lr_hint=hint)
    train_adaptive(model, optimizer, acc, 2, after_first_backward=deliver_at(ns, {0: up}))
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.2, 0.1])
    assert acc.history[0].lr == pytest.approx(0.2)
    scheduler.step()  # LambdaLR recomputes from base_lrs: the change survives it
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.2, 0.1])
    ns.remove()


def test_a_batch_other_than_the_advised_one_scales_the_learning_rate_by_the_hints_rule(free_address: str) -> None:
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    ns = noisescope.watch(model, optimizer, address=free_address, policy=noisescope.BatchPolicy(max_batch=4 * MICRO))
    acc = ns.adaptive_accumulation(steps=2, micro_batch=MICRO, apply_lr_hint=True)
    hint = noisescope.LearningRateHint(current_lr=0.01, suggested_lr=0.02, rule="sqrt", note="heuristic")
    up = advice(action="increase", current_global_batch=16, recommended_global_batch=64, micro_batch=MICRO,
                accumulation_steps=8, lr_hint=hint)  # bounded to 4 micro-batches: batch ×2, lr ×√2
    train_adaptive(model, optimizer, acc, 2, after_first_backward=deliver_at(ns, {0: up}))
    ns.remove()
    assert acc.steps == 4
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 2**0.5)


def test_without_apply_lr_hint_the_learning_rate_stays(free_address: str) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=free_address)
    acc = ns.adaptive_accumulation(steps=2, micro_batch=MICRO)
    hint = noisescope.LearningRateHint(current_lr=0.05, suggested_lr=0.1, rule="linear", note="heuristic")
    up = advice(action="increase", current_global_batch=16, recommended_global_batch=32, micro_batch=MICRO,
                accumulation_steps=4, lr_hint=hint)
    train_adaptive(model, optimizer, acc, 2, after_first_backward=deliver_at(ns, {0: up}))
    ns.remove()
    assert acc.steps == 4 and optimizer.param_groups[0]["lr"] == 0.05


def test_without_advice_training_is_bitwise_identical_to_fixed_accumulation(free_address: str) -> None:
    loop = Loop(steps=5, sizes=(MICRO, MICRO, MICRO), clip=0.5)
    plain = make_model()
    loop.run(plain, make_optimizer(plain))
    model = make_model()
    optimizer = make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, free_address)
    acc = ns.adaptive_accumulation(steps=3, micro_batch=MICRO)
    assert train_adaptive(model, optimizer, acc, 5) == [3] * 5
    ns.remove()
    assert len(records) == 5  # every step really measured
    for a, b in zip(parameters_of(plain), parameters_of(model)):
        assert torch.equal(a, b)


def test_remove_gives_back_the_step_hook_and_keeps_the_count(free_address: str) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=free_address)
    hooks = dict(optimizer._optimizer_step_post_hooks)
    acc = ns.adaptive_accumulation(steps=3, micro_batch=MICRO)
    assert len(optimizer._optimizer_step_post_hooks) == len(hooks) + 1
    with pytest.raises(RuntimeError, match="already has one"):
        ns.adaptive_accumulation(steps=2, micro_batch=MICRO)
    acc.remove()
    acc.remove()
    assert dict(optimizer._optimizer_step_post_hooks) == hooks
    ns._on_recommendation(advice(action="increase", current_global_batch=24, recommended_global_batch=48,
                                 micro_batch=MICRO, accumulation_steps=6))
    assert train_adaptive(model, optimizer, acc, 2) == [3, 3]
    again = ns.adaptive_accumulation(steps=2, micro_batch=MICRO)  # a removed one can be replaced
    ns.remove()
    assert dict(optimizer._optimizer_step_post_hooks) == {}
    assert again.steps == 2 and "removed" in repr(again)


def test_a_disabled_watch_gives_a_fixed_count() -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(model, optimizer, enabled=False)
    acc = ns.adaptive_accumulation(steps=2, micro_batch=MICRO)
    assert dict(optimizer._optimizer_step_post_hooks) == {}
    assert train_adaptive(model, optimizer, acc, 2) == [2, 2] and acc.global_batch == 2 * MICRO


def test_an_internal_error_is_logged_once_and_changes_nothing(free_address: str, caplog) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    ns = noisescope.watch(model, optimizer, address=free_address)
    acc = ns.adaptive_accumulation(steps=2, micro_batch=MICRO, apply_lr_hint=True, scheduler=scheduler)
    scheduler.base_lrs = [None]  # scaling it fails inside the optimizer's step hook
    hint = noisescope.LearningRateHint(current_lr=0.05, suggested_lr=0.1, rule="linear", note="heuristic")
    schedule = {
        step: advice(sequence=step + 1, step=step, action="increase", current_global_batch=2 * MICRO,
                     recommended_global_batch=4 * MICRO, micro_batch=MICRO, accumulation_steps=4, lr_hint=hint)
        for step in range(3)
    }
    with caplog.at_level(logging.ERROR, logger="noisescope"):
        counts = train_adaptive(model, optimizer, acc, 4, after_first_backward=deliver_at(ns, schedule))
    ns.remove()
    errors = [r for r in caplog.records if "adaptive accumulation helper" in r.getMessage()]
    assert len(errors) == 1
    assert counts == [2, 2, 2, 2] and acc.history == [] and optimizer.param_groups[0]["lr"] == 0.05


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(steps=1, micro_batch=MICRO), ValueError, "steps must be ≥ 2"),
        (dict(steps=0, micro_batch=MICRO), ValueError, "steps must be ≥ 2"),
        (dict(steps=2.0, micro_batch=MICRO), TypeError, "steps must be an int"),
        (dict(steps=2, micro_batch=0), ValueError, "micro_batch must be ≥ 1"),
        (dict(steps=2, micro_batch=True), TypeError, "micro_batch must be an int"),
        (dict(steps=2, micro_batch=MICRO, apply_lr_hint="yes"), TypeError, "apply_lr_hint must be a bool"),
        (dict(steps=2, micro_batch=MICRO, scheduler=object()), TypeError, "scheduler must be an LR scheduler"),
    ],
)
def test_bad_helper_arguments_are_refused_naming_them(free_address: str, kwargs, error, message) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    hooks = dict(optimizer._optimizer_step_post_hooks)
    # Accumulation only: one micro-batch per step would leave this watch with no second batch scale.
    ns = noisescope.watch(model, optimizer, address=free_address, source="accumulation")
    with pytest.raises(error, match=message):
        ns.adaptive_accumulation(**kwargs)
    assert dict(optimizer._optimizer_step_post_hooks) == hooks
    ns.remove()


def test_a_granularity_above_the_policys_max_batch_cannot_be_satisfied(free_address: str) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(
        model, optimizer, address=free_address, policy=noisescope.BatchPolicy(max_batch=31), source="accumulation"
    )
    with pytest.raises(ValueError, match=r"bounds cannot be satisfied.*16 × world size 1 × 2 accumulation steps = 32.*max_batch 31"):
        ns.adaptive_accumulation(steps=2, micro_batch=16)
    assert ns.adaptive_accumulation(steps=2, micro_batch=15).global_batch == 30
    ns.remove()


def test_with_per_example_norms_one_micro_batch_per_step_is_enough(free_address: str) -> None:
    """The demo model is fully covered, so auto measures a one-micro-batch step per example."""
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=free_address, policy=noisescope.BatchPolicy(max_batch=31))
    with pytest.raises(ValueError, match=r"steps must be ≥ 1, got 0"):
        ns.adaptive_accumulation(steps=0, micro_batch=MICRO)
    with pytest.raises(ValueError, match=r"bounds cannot be satisfied.*32 × world size 1 × 1 accumulation steps = 32"):
        ns.adaptive_accumulation(steps=1, micro_batch=32)
    assert ns.adaptive_accumulation(steps=1, micro_batch=16).global_batch == 16
    ns.remove()
