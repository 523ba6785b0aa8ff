"""Coalescing in the sender: steps wake grpcio's thread in groups and go several to a message, never stranded.

The hand-off wakes its taker only once `wake_at` items wait (or an urgent one: close()'s goodbye); the taker
otherwise looks every flush interval, so a lone step still reaches the sidecar. A sidecar whose Welcome does
not say it takes StepBundles (one older than them) gets one step per message, with the same statistics.
Real training, the real sidecar over gRPC.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import noisescope
import noisescope._sender as sender_module
from conftest import Sidecar
from noisescope._sender import _Handoff, Sender
from test_hook_support import Loop, make_model, make_optimizer, wait_connected, wait_for_events

_DIFFERENT = {"run", "unixMs", "ts", "latencyMs"}  # wall-clock and naming fields of a step event


def test_the_handoff_wakes_its_taker_at_wake_at_items_or_for_an_urgent_one() -> None:
    handoff = _Handoff(limit=100)
    handoff.wake_at = 3
    woke: list[list[Any]] = []
    taker = threading.Thread(target=lambda: woke.append(handoff.gather(10, 60.0)))
    taker.start()
    handoff.put(0)
    handoff.put(1)
    taker.join(0.3)
    assert taker.is_alive()  # two items wait for the third (or the 60 s clock)
    handoff.put(2)
    taker.join(30)
    assert woke == [[0, 1, 2]]
    handoff.put(3)
    assert handoff.gather(10, 0.0) == [3]  # the clock ran out: whatever waits, maybe fewer than wake_at
    urgent = threading.Thread(target=lambda: woke.append(handoff.gather(10, 60.0)))
    urgent.start()
    handoff.put(4, urgent=True)
    urgent.join(30)
    assert woke[1:] == [[4]]
    assert [handoff.put(i) for i in range(5, 9)] == [True] * 4
    assert handoff.gather(2, 0.0) == [5, 6] and handoff.gather(5, 0.0) == [7, 8]  # at most `limit`, oldest first


def test_a_lone_step_reaches_the_sidecar_within_the_flush_interval_and_a_full_group_wakes_the_sender_at_once(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    with noisescope.watch(model, optimizer, address=sidecar.address, run="lone") as ns:
        wait_connected(ns)
        Loop(steps=1).run(model, optimizer)
        # Nothing wakes the sender for one step but its flush clock: the step is not stranded until the next ones.
        assert [e["step"] for e in wait_for_events(sidecar, "step", "lone", 1, timeout=20)] == [0]
        assert ns.stats.messages_sent == 2  # Hello, the step
    assert ns.stats.messages_sent == 3  # and Goodbye

    # The clock stopped (60 s): three steps wait for a fourth, which wakes the sender; all four go as one message.
    monkeypatch.setattr(sender_module, "FLUSH_S", 60.0)
    model = make_model()
    optimizer = make_optimizer(model)
    with noisescope.watch(model, optimizer, address=sidecar.address, run="group") as ns:
        ns._sender.steps_per_message = 4
        wait_connected(ns)
        time.sleep(0.3)  # the sender's first look began with the 60 s clock
        Loop(steps=3).run(model, optimizer)
        time.sleep(0.5)
        assert (ns.stats.messages_sent, ns.stats.queued) == (1, 3)  # Hello only: three steps wait
        Loop(steps=1).run(model, optimizer)
        events = wait_for_events(sidecar, "step", "group", 4, timeout=20)
        assert [e["step"] for e in events] == [0, 1, 2, 3]
        assert ns.stats.messages_sent == 2


def test_a_sidecar_whose_welcome_does_not_take_bundles_gets_one_step_per_message_and_the_same_statistics(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sender_module, "FLUSH_S", 60.0)  # coalescing waits for remove(): one group of all steps
    loop = Loop(steps=4)
    events: dict[str, list[dict[str, Any]]] = {}
    sent: dict[str, int] = {}
    for run in ("takes-bundles", "older"):
        if run == "older":
            original = Sender._on_reply

            def older_welcome(self: Sender, reply: Any) -> bool:
                if reply.WhichOneof("kind") == "welcome":
                    reply.welcome.ClearField("takes_bundles")  # the Welcome as a sidecar before StepBundles writes it
                return original(self, reply)

            monkeypatch.setattr(Sender, "_on_reply", older_welcome)
        model = make_model()
        optimizer = make_optimizer(model)
        ns = noisescope.watch(model, optimizer, address=sidecar.address, run=run)
        ns._sender.steps_per_message = loop.steps + 1
        wait_connected(ns)
        loop.run(model, optimizer)
        ns.remove()
        events[run] = [{k: v for k, v in e.items() if k not in _DIFFERENT} for e in wait_for_events(sidecar, "step", run, loop.steps)]
        sent[run] = ns.stats.messages_sent
        assert ns.stats.refusals == 0 and ns.stats.dropped == 0
    assert [e["step"] for e in events["older"]] == list(range(loop.steps))
    assert events["older"] == events["takes-bundles"]
    assert sent == {"takes-bundles": 3, "older": 2 + loop.steps}  # Hello and Goodbye around the steps
