"""The hook's send cost: steps coalesced into one message, and no measuring while no sidecar is there.

Real training, real sidecar over gRPC: several steps in one StepBundles message, one StepBundle per message and
separate messages give the sidecar the same statistics; an outage arms no hook and counts the due steps dropped;
the sidecar coming back is measured from the next step.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import torch

import noisescope
import noisescope._sender  # watch() imports it lazily; the tests patch it before the first watch()
from conftest import Sidecar
from test_hook_support import Loop, make_model, make_optimizer, parameters_of, wait_connected, wait_for_events

STEPS = 5
# Wall-clock and naming fields: everything else of a step event must be equal between the two runs.
_DIFFERENT = {"run", "unixMs", "ts", "latencyMs"}


def _comparable(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k not in _DIFFERENT} for e in events]


def _train_watched(
    sidecar: Sidecar, run: str, bundle: bool, loop: Loop, per_message: int, **kwargs: Any
) -> tuple[torch.nn.Module, Any]:
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=sidecar.address, run=run, **kwargs)
    ns._sender.bundle_steps = bundle  # private switch: the separate messages of before (old sidecars get them)
    ns._sender.steps_per_message = per_message  # private switch: 1 sends each step as it comes
    wait_connected(ns)
    time.sleep(0.3)  # the sender waits for steps
    loop.run(model, optimizer)
    ns.remove()  # flushes: every step sent, then Goodbye
    return model, ns.stats


@pytest.mark.parametrize(
    ("source", "sizes"),
    [("accumulation", (8, 8, 8)), ("per-example", (16,))],
)
def test_coalesced_and_bundled_steps_give_the_sidecar_the_statistics_separate_messages_give(
    sidecar: Sidecar, source: str, sizes: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Coalesced: the first step goes at once (none came for a while), the others wait (60 s) for remove().
    monkeypatch.setattr(noisescope._sender, "FLUSH_S", 60.0)
    loop = Loop(steps=STEPS, sizes=sizes)
    plain = make_model()
    loop.run(plain, make_optimizer(plain))
    results = {}
    for way, bundle, per_message in (("coalesced", True, STEPS + 1), ("bundled", True, 1), ("separate", False, 1)):
        run = f"{source}-{way}"
        model, stats = _train_watched(sidecar, run, bundle, loop, per_message, source=source)
        for a, b in zip(parameters_of(plain), parameters_of(model)):
            assert torch.equal(a, b)  # training bitwise unchanged by the hook, every way
        events = wait_for_events(sidecar, "step", run, STEPS)
        results[way] = (events, stats)
    coalesced, bundled, separate = (results[way][0] for way in ("coalesced", "bundled", "separate"))
    assert [e["step"] for e in coalesced] == list(range(STEPS))
    assert not any(e["skipped"] for e in coalesced)
    assert _comparable(coalesced) == _comparable(bundled) == _comparable(separate)
    # The first step, then all others in one message; one message per measured step; one per micro-batch plus the
    # StepEnd (and Hello, Goodbye every way).
    k = len(sizes)
    sent = tuple(results[way][1].messages_sent for way in ("coalesced", "bundled", "separate"))
    assert sent == (4, 2 + STEPS, 2 + STEPS * (k + 1))
    assert all(results[way][1].refusals == 0 for way in results)


def _armed(model: torch.nn.Module) -> int:
    """Gradient hooks on the model's parameters right now."""
    return sum(len(p._backward_hooks or {}) for p in model.parameters())


def test_no_hook_is_armed_while_no_sidecar_is_there_and_the_next_step_after_it_returns_is_measured(
    free_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="noisescope")
    loop = Loop(steps=4)
    plain = make_model()
    plain_opt = make_optimizer(plain)  # trained alongside, loop for loop: the parameters must stay bitwise equal
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=free_address, run="outage")
    armed_during: list[int] = []
    loop.run(model, optimizer)
    loop.run(plain, plain_opt)
    deadline = time.monotonic() + 10
    while "no sidecar reachable" not in caplog.text:
        assert time.monotonic() < deadline, "the outage was never noticed"
        time.sleep(0.02)
    Loop(steps=1).run(model, optimizer)  # the step begun before the outage was known
    Loop(steps=1).run(plain, plain_opt)
    before = ns.stats
    # While the outage is known: every step due, none measured, no gradient hook armed, each counted dropped.
    loop.run(model, optimizer, on_step_start=lambda step: armed_during.append(_armed(model)))
    loop.run(plain, plain_opt)
    during = ns.stats
    assert armed_during == [0] * loop.steps
    assert during.steps_measured == before.steps_measured
    assert (during.steps_seen - before.steps_seen, during.dropped - before.dropped) == (loop.steps, loop.steps)

    port = free_address.rsplit(":", 1)[1]
    back = Sidecar("--port", port)
    try:
        wait_connected(ns)
        # The step in progress when the Welcome came was begun unmeasured: it is measured from its first forward.
        loop.run(model, optimizer)
        loop.run(plain, plain_opt)
        after = ns.stats
        ns.remove()
        assert after.steps_measured - during.steps_measured == loop.steps
        first_back = during.steps_seen
        steps = wait_for_events(back, "step", "outage", loop.steps)
        assert [e["step"] for e in steps] == list(range(first_back, first_back + loop.steps))
        assert not any(e["skipped"] for e in steps)
        # Hello told the sidecar what the outage cost: every step due before it came back.
        health = back.wait_for(lambda e: e["type"] == "health" and e["stepsCompleted"] == loop.steps)
        assert health["droppedByHooks"] == after.dropped == first_back
    finally:
        back.stop()
    for a, b in zip(parameters_of(plain), parameters_of(model)):
        assert torch.equal(a, b)


def test_a_sidecar_that_reads_bundles_as_empty_messages_gets_separate_messages_from_then_on(
    sidecar: Sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    from noisescope.v1 import noisescope_pb2 as pb

    caplog.set_level(logging.INFO, logger="noisescope")
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=sidecar.address, run="older-sidecar")
    ns._sender.steps_per_message = 1  # as for a sidecar whose Welcome does not say takes_bundles: one step a message
    wait_connected(ns)
    loop = Loop(steps=2)
    loop.run(model, optimizer)
    wait_for_events(sidecar, "step", "older-sidecar", 2)  # both sent as bundles
    # A sidecar older than StepBundle skips the unknown field: it sees a RankMessage with no kind set, and says so.
    assert ns._sender._offer([pb.RankMessage()])
    deadline = time.monotonic() + 10
    while ns._sender.bundle_steps:
        assert time.monotonic() < deadline, "the refusal never switched bundles off"
        time.sleep(0.01)
    loop.run(model, optimizer)
    ns.remove()
    assert [e["step"] for e in wait_for_events(sidecar, "step", "older-sidecar", 4)] == [0, 1, 2, 3]
    k = len(loop.sizes)
    # Hello, 2 bundles, the empty message, 2 × (k shards + StepEnd), Goodbye.
    assert (ns.stats.messages_sent, ns.stats.refusals) == (1 + 2 + 1 + 2 * (k + 1) + 1, 1)
    assert "predates step bundles" in caplog.text
