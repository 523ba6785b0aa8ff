"""per_example_sample="auto" thinning end to end: where even s = MIN_SAMPLE costs more than the budget's share, only 1
in `stride` of the steps due is measured, one at random in each block. Real training of a small conv net on
load_digits, the real sidecar over real gRPC; Budget's constants patched (as in test_per_example_auto_sample.py) so
the decisions come within a few steps on any machine: exact, then s = MIN_SAMPLE, then thinned to MAX_STRIDE.

The sidecar must take every measured step as a per-example step with an estimate (a skipped step is not a step
without sums), the run's source never flips, training stays bitwise untouched; thinning stops on steps that
accumulate (auto's per-example work is off there); and only the training thread's share of the terms counts."""
from __future__ import annotations

import pytest
import torch

from noisescope import demo
from noisescope._per_example_budget import Budget
from test_hook_support import parameters_of, wait_connected, wait_for_events, watch_and_record
from test_per_example_sampled import DigitsConv

BATCH, WARMUP, WINDOW, STRIDE = 32, 2, 3, 4
# Exact to the first window's end (the window's last step decides s = MIN_SAMPLE), a window at MIN_SAMPLE (whose
# last step decides the stride): every step before THINNED is measured.
THINNED = WARMUP + 2 * WINDOW


@pytest.fixture(autouse=True)
def budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any cost is over a share of 1e-9 of the step and over the floor; never futile (on this net s = 4 costs about
    what exact does): the budget goes to MIN_SAMPLE, then to the widest stride."""
    for name, value in dict(FRACTION=1e-9, FLOOR_S=0.0, WARMUP=WARMUP, WINDOW=WINDOW, FUTILE=1e9, MAX_STRIDE=STRIDE).items():
        monkeypatch.setattr(Budget, name, value)


def train(model, optimizer, steps: int, accumulation: int = 1, seed: int = 0) -> None:
    demo.train(model, optimizer, demo.make_data(), steps=steps, micro_batch=BATCH, accumulation=accumulation, seed=seed)


def test_thinned_steps_are_one_per_block_at_random_and_the_sidecar_estimates_each(sidecar) -> None:
    steps = THINNED + 18 * STRIDE
    plain = DigitsConv()
    train(plain, demo.make_optimizer(plain), steps)
    model = DigitsConv()
    optimizer = demo.make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, sidecar.address, run="thinned")
    wait_connected(ns)
    train(model, optimizer, steps)
    assert ns.stats.measuring_one_in == STRIDE
    ns.remove()

    measured = [r.step for r in records]
    assert measured[:THINNED] == list(range(THINNED))
    blocks = [[s for s in measured if THINNED + b * STRIDE <= s < THINNED + (b + 1) * STRIDE] for b in range(18)]
    assert all(len(block) == 1 for block in blocks), blocks
    places = {block[0] % STRIDE for block in blocks}
    assert len(places) >= 2, f"one step in each block, but always the same one: {places}"  # not aliased
    assert all(r.per_example_sums and r.per_example_sampled for r in records[THINNED - WINDOW :])
    stats = ns.stats
    assert (stats.steps_seen, stats.steps_measured, stats.dropped, stats.refusals) == (steps, len(measured), 0, 0)

    events = wait_for_events(sidecar, "step", "thinned", len(measured))
    assert [e["step"] for e in events] == measured
    assert all(e["source"] == "per-example" and not e["skipped"] and e["raw"] is not None for e in events)
    assert events[-1]["smoothed"] is not None
    sidecar.wait_for(lambda e: e["type"] == "run" and e["run"] == "thinned" and e["ended"])
    sources = [e["source"] for e in sidecar.of_type("run") if e["run"] == "thinned"]
    # 'none' at the Hello, before any step (as any run); never again between measured steps.
    first = sources.index("per-example")
    assert set(sources[first:]) == {"per-example"} and set(sources[:first]) <= {"none"}, sources
    health = sidecar.wait_for(lambda e: e["type"] == "health" and e["stepsCompleted"] == len(measured))
    assert (health["refused"], health["stepsIncomplete"]) == (0, 0)
    for a, b in zip(parameters_of(plain), parameters_of(model)):
        assert torch.equal(a, b)


def test_steps_that_accumulate_are_not_thinned(sidecar) -> None:
    """Thinned on one-micro-batch steps, then two micro-batches a step (what adaptive_accumulation does): auto takes
    no per-example sums there, so every step is measured again; and thinned once more back at one."""
    model = DigitsConv()
    optimizer = demo.make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, sidecar.address, run="thin-accumulate")
    wait_connected(ns)
    first = THINNED + 6 * STRIDE
    train(model, optimizer, first)
    assert ns.stats.measuring_one_in == STRIDE
    thinned = ns.stats.steps_measured  # the meter's count (the records come from the sender thread, later)
    assert thinned == THINNED + 6

    ns._meter.expect_micro_batches(2)  # between steps, as adaptive_accumulation's step post-hook does
    train(model, optimizer, 12, accumulation=2, seed=1)
    assert ns.stats.steps_measured == thinned + 12

    ns._meter.expect_micro_batches(1)
    train(model, optimizer, 8 * STRIDE, seed=2)
    ns.remove()
    accumulated = records[thinned : thinned + 12]
    assert [r.step for r in accumulated] == list(range(first, first + 12))
    assert all(len(r.micro_examples) == 2 and not r.per_example_sums for r in accumulated)
    back = [r.step for r in records[thinned + 12 :]]
    assert 7 <= len(back) <= 9, back  # the stride holds: one in each block of STRIDE (a block may straddle the ends)
    assert (ns.stats.dropped, ns.stats.refusals) == (0, 0)


@pytest.mark.parametrize("worker", [False, True])
def test_only_the_training_threads_share_of_the_terms_counts_towards_thinning(
    sidecar, monkeypatch: pytest.MonkeyPatch, worker: bool
) -> None:
    """Terms on the worker thread overlap the backward: observe() gets them in the cost, not in inline_s."""
    seen: list[tuple[float, float | None]] = []
    observe = Budget.observe

    def spy(self, cost_s: float, step_s: float, batch: int, inline_s: float | None = None) -> bool:
        seen.append((cost_s, inline_s))
        return observe(self, cost_s, step_s, batch, inline_s)

    monkeypatch.setattr(Budget, "observe", spy)
    monkeypatch.setattr(Budget, "MAX_STRIDE", 1)  # every step measured: the same steps either way
    model = DigitsConv()
    optimizer = demo.make_optimizer(model)
    ns, _ = watch_and_record(model, optimizer, sidecar.address, run=f"thin-worker-{worker}")
    ns._meter._per_example.overlap.enabled = worker
    wait_connected(ns)
    train(model, optimizer, 16)
    ns.remove()
    assert len(seen) == 16 and all(inline is not None and 0 <= inline <= cost + 1e-12 for cost, inline in seen)
    on_worker = [cost - inline for cost, inline in seen]  # type: ignore[operator]
    if worker:
        assert sum(on_worker) > 0.2 * sum(cost for cost, _ in seen), on_worker
    else:
        assert on_worker == [0.0] * 16
