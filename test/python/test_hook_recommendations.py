"""The real sidecar's batch-size advice reaches the hook: every recommendation once, across
reconnections and restarts, and followed by the adaptive accumulation helper on real training
(load_digits, the demo's model and loop)."""
from __future__ import annotations

import math
import time
from typing import Callable

import pytest
import torch

import noisescope
from conftest import Sidecar
from noisescope import demo
from test_hook_support import parameters_of, wait_connected

MICRO = 16


def identity(r: noisescope.Recommendation | dict) -> tuple:
    """What makes two recommendations the same one, from the hook's value or the sidecar's --json line."""
    if isinstance(r, dict):
        return (r["sequence"], r["step"], r["action"], r["currentGlobalBatch"], r["recommendedGlobalBatch"])
    return (r.sequence, r.step, r.action, r.current_global_batch, r.recommended_global_batch)


def made_for(sidecar: Sidecar, run: str) -> list[dict]:
    return [e for e in sidecar.of_type("recommendation") if e["run"] == run]


def until(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def train_until(condition: Callable[[], bool], model, optimizer, dataset, what: str, limit: int = 400) -> int:
    """Fixed 16 × 2 training, 10 steps at a time (paced, so the sidecar keeps up), until `condition`."""
    for chunk in range(limit // 10):
        demo.train(model, optimizer, dataset, steps=10, micro_batch=MICRO, accumulation=2, seed=chunk, step_time=0.005)
        if condition():
            return (chunk + 1) * 10
    raise AssertionError(f"no {what} after {limit} steps")


def watched_demo(address: str, run: str, dataset, **kwargs):
    """The demo's model and optimizer under watch(), with a callback collecting every recommendation."""
    model = demo.make_model(0)
    optimizer = demo.make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=address, run=run, dataset_size=len(dataset), **kwargs)
    received: list[noisescope.Recommendation] = []
    ns.on_recommendation(received.append)
    return model, optimizer, ns, received


@pytest.fixture(scope="module")
def dataset():
    return demo.make_data()


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls; the sidecar and the hook's threads need the other core
    yield
    torch.set_num_threads(threads)


def test_adaptive_training_follows_the_noise_scale_and_gets_every_recommendation_once(dataset) -> None:
    sidecar = Sidecar()
    try:
        policy = noisescope.BatchPolicy(max_batch=512, max_factor=2)
        # The accumulation source: its early estimates are what the thresholds below were set on.
        model, optimizer, ns, received = watched_demo(
            sidecar.address, "adaptive", dataset, policy=policy, source="accumulation"
        )
        acc = ns.adaptive_accumulation(steps=2, micro_batch=MICRO)
        wait_connected(ns)
        steps = 300
        history = demo.train(model, optimizer, dataset, steps=steps, micro_batch=MICRO, adaptive=acc, step_time=0.005)
        last = sidecar.wait_for(lambda e: e["type"] == "step" and e["run"] == "adaptive" and e["step"] == steps - 1)
        until(lambda: len(received) >= len(made_for(sidecar, "adaptive")), "the last recommendations to arrive")
        ns.remove()
        run = sidecar.wait_for(lambda e: e["type"] == "run" and e["run"] == "adaptive" and e["ended"])
    finally:
        sidecar.stop()
    made = made_for(sidecar, "adaptive")

    # Hello carried the policy and the optimizer.
    assert run["optimizer"] == "SGD" and run["policy"] == {"maxBatch": 512, "maxFactor": 2}
    # Every recommendation the sidecar made reached the callback, once, in order, with its fields.
    assert [identity(r) for r in received] == [identity(e) for e in made]
    assert [r.sequence for r in received] == list(range(1, len(made) + 1))
    for r, e in zip(received, made):
        assert (r.noise_scale, r.interval, r.reason, r.objective) == (
            pytest.approx(e["noiseScale"]), pytest.approx((e["interval"]["low"], e["interval"]["high"])),
            e["reason"], "balanced",
        )
        assert (r.lr_hint is None) == (e["lrHint"] is None)

    # It started far below the noise scale and increased; every change was one the sidecar advised
    # for the batch then running, within the policy's factor, at a step boundary.
    first = received[0]
    assert first.action == "increase" and first.current_global_batch == 2 * MICRO and first.noise_scale > 4 * MICRO
    changes = acc.history
    assert len(changes) >= 2 and changes[0].global_batch > 2 * MICRO
    advised = {r.sequence: r for r in received}
    for change in changes:
        r = advised[change.sequence]
        assert (r.current_global_batch, r.recommended_global_batch) == (change.previous_global_batch, change.global_batch)
        assert 1 / 2 <= change.global_batch / change.previous_global_batch <= 2
        assert change.step > r.step  # applied after the step it was made from
    micro_batches = [h["micro_batches"] for h in history]
    expected = [2] * steps
    for change in changes:
        expected[change.step:] = [change.accumulation_steps] * (steps - change.step)
    assert micro_batches == expected  # each step ran one count: changes only at boundaries
    # The sidecar measured every step (none skipped), each at the batch the helper ran.
    measured = {e["step"]: e for e in sidecar.of_type("step") if e["run"] == "adaptive"}
    assert sorted(measured) == list(range(steps))
    assert all(not e["skipped"] and e["globalBatch"] == MICRO * expected[s] for s, e in measured.items())
    # It ends near the smoothed estimate (within its interval, or one change of the factor), or at the bound.
    final, b_simple = acc.global_batch, last["smoothed"]["bSimple"]
    interval = last["smoothed"]["interval"] or {"low": 0, "high": math.inf}
    assert final == policy.max_batch or interval["low"] <= final <= interval["high"] or 1 / 2 <= final / b_simple <= 2, (
        f"final batch {final}, smoothed B_simple {b_simple:.0f} {interval}"
    )
    assert final >= 4 * 2 * MICRO


def test_reconnecting_redelivers_the_latest_recommendation_once(dataset) -> None:
    sidecar = Sidecar("--window", "1")
    try:
        model, optimizer, ns, received = watched_demo(sidecar.address, "again", dataset)
        arrivals: list[noisescope.Recommendation] = []  # every Recommendation message, before the handle's dedup
        deliver = ns._sender._on_recommendation
        ns._sender._on_recommendation = lambda r: (arrivals.append(r), deliver(r))
        wait_connected(ns)
        train_until(lambda: bool(received), model, optimizer, dataset, "recommendation")
        until(lambda: len(received) == len(made_for(sidecar, "again")), "every recommendation made so far")
        before = list(received)
        ns._sender._call.cancel()  # the stream ends; the hook attaches again, same session
        wait_connected(ns, False)
        wait_connected(ns)
        until(lambda: len(arrivals) > len(before), "the re-delivery after Welcome")
        time.sleep(0.2)
        ns.remove()
    finally:
        sidecar.stop()
    assert identity(arrivals[-1]) == identity(before[-1])  # the sidecar did send it again...
    assert received == before and ns.recommendation == before[-1]  # ...and the callback saw it once


def test_advice_from_a_restarted_sidecar_is_new_even_where_its_sequence_restarts(dataset) -> None:
    first = Sidecar("--window", "1")
    second: Sidecar | None = None
    try:
        model, optimizer, ns, received = watched_demo(first.address, "restarted", dataset)
        wait_connected(ns)
        train_until(lambda: bool(received), model, optimizer, dataset, "recommendation from the first sidecar")
        until(lambda: len(received) == len(made_for(first, "restarted")), "the first sidecar's recommendations")
        from_first = len(received)
        first.stop()
        wait_connected(ns, False)
        second = Sidecar("--port", first.address.rsplit(":", 1)[1], "--window", "1")
        wait_connected(ns)
        train_until(lambda: bool(made_for(second, "restarted")), model, optimizer, dataset, "recommendation from the second")
        until(lambda: len(received) >= from_first + len(made_for(second, "restarted")), "the second sidecar's advice")
        ns.remove()
    finally:
        first.stop()
        if second is not None:
            second.stop()
    new = made_for(second, "restarted")
    assert [identity(r) for r in received[from_first:]] == [identity(e) for e in new]
    assert received[from_first].step > received[from_first - 1].step


def test_without_advice_the_helper_leaves_training_bitwise_unchanged(dataset) -> None:
    steps = 40
    plain = demo.make_model(0)
    demo.train(plain, demo.make_optimizer(plain), dataset, steps=steps, micro_batch=MICRO, accumulation=3)

    sidecar = Sidecar("--window", "1000000")  # evidence never lasts long enough for a change
    try:
        model, optimizer, ns, _ = watched_demo(sidecar.address, "quiet", dataset)
        acc = ns.adaptive_accumulation(steps=3, micro_batch=MICRO)
        wait_connected(ns)
        history = demo.train(model, optimizer, dataset, steps=steps, micro_batch=MICRO, adaptive=acc)
        sidecar.wait_for(lambda e: e["type"] == "step" and e["run"] == "quiet" and e["step"] == steps - 1)
        ns.remove()
    finally:
        sidecar.stop()
    assert all(e["action"] == "hold" for e in made_for(sidecar, "quiet"))
    assert acc.history == [] and {h["micro_batches"] for h in history} == {3}
    for a, b in zip(parameters_of(plain), parameters_of(model)):
        assert torch.equal(a, b)
