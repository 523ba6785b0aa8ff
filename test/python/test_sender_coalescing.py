"""Coalescing in the sender: steps wake grpcio's thread in groups and go several to a message, never stranded.

The hand-off wakes its taker for an item after a quiet interval, once `wake_at` items wait, or for an urgent
one (close()'s goodbye); within the interval the taker looks again when it ends, so no step waits longer. A sidecar whose Welcome does
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


def test_the_handoff_wakes_its_taker_for_a_step_after_a_quiet_interval_at_wake_at_items_or_for_an_urgent_one() -> None:
    handoff = _Handoff(limit=100)
    handoff.wake_at, handoff.interval = 3, 60.0
    assert handoff.put(0) and handoff.gather(10, 60.0) == [0]  # nothing taken for a while: woken at once
    woke: list[list[Any]] = []
    taker = threading.Thread(target=lambda: woke.append(handoff.gather(10, 60.0)))
    taker.start()
    handoff.put(1)
    handoff.put(2)
    taker.join(0.3)
    assert taker.is_alive()  # within the interval two items wait for a third (or the interval's end)
    handoff.put(3)
    taker.join(30)
    assert woke == [[1, 2, 3]]
    handoff.interval = 0.5
    urgent = threading.Thread(target=lambda: woke.append(handoff.gather(10, 600.0)))
    urgent.start()
    handoff.put(4, urgent=True)
    urgent.join(30)
    assert woke[1:] == [[4]]
    # Within the (now 0.5 s) interval a lone item wakes nobody: the taker looks when the interval ends, not at 600 s.
    later = threading.Thread(target=lambda: woke.append(handoff.gather(10, 600.0)))
    later.start()
    assert handoff.put(5)
    later.join(30)
    assert not later.is_alive() and woke[2:] == [[5]]
    handoff.interval = 0.0
    assert [handoff.put(i) for i in range(6, 10)] == [True] * 4
    assert handoff.gather(2, 0.0) == [6, 7] and handoff.gather(5, 0.0) == [8, 9]  # at most `limit`, oldest first


def test_a_lone_step_goes_at_once_later_ones_wait_for_the_flush_interval_or_a_full_group(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The interval stopped (60 s): a step after a quiet while goes at once; the next ones wait for a group of four.
    monkeypatch.setattr(sender_module, "FLUSH_S", 60.0)
    model = make_model()
    optimizer = make_optimizer(model)
    with noisescope.watch(model, optimizer, address=sidecar.address, run="group") as ns:
        ns._sender.steps_per_message = 4
        wait_connected(ns)
        time.sleep(0.3)  # the sender waits for steps
        Loop(steps=1).run(model, optimizer)
        assert [e["step"] for e in wait_for_events(sidecar, "step", "group", 1, timeout=20)] == [0]
        Loop(steps=3).run(model, optimizer)
        time.sleep(0.5)
        assert (ns.stats.messages_sent, ns.stats.queued) == (2, 3)  # Hello, step 0; three steps wait
        Loop(steps=1).run(model, optimizer)
        events = wait_for_events(sidecar, "step", "group", 5, timeout=20)
        assert [e["step"] for e in events] == [0, 1, 2, 3, 4]
        assert ns.stats.messages_sent == 3  # steps 1–4 in one message


def test_steps_within_the_flush_interval_reach_the_sidecar_without_a_full_group_or_remove(sidecar: Sidecar) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    with noisescope.watch(model, optimizer, address=sidecar.address, run="flushed") as ns:
        wait_connected(ns)
        Loop(steps=3).run(model, optimizer)  # fewer than a group: only the flush interval sends the later ones
        assert [e["step"] for e in wait_for_events(sidecar, "step", "flushed", 3, timeout=20)] == [0, 1, 2]
        assert ns.stats.queued == 0


def _grouped_run(sidecar: Sidecar, run: str, loop: Loop) -> tuple[list[dict[str, Any]], int]:
    """`loop` watched, the sender idle when it starts (its first step goes at once, the rest as the sender groups
    them): the sidecar's step events without wall-clock fields, and the messages sent; nothing refused or dropped."""
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=sidecar.address, run=run)
    ns._sender.steps_per_message = loop.steps + 1
    wait_connected(ns)
    time.sleep(0.3)  # the sender waits for steps
    loop.run(model, optimizer)
    ns.remove()
    assert ns.stats.refusals == 0 and ns.stats.dropped == 0
    events = [{k: v for k, v in e.items() if k not in _DIFFERENT} for e in wait_for_events(sidecar, "step", run, loop.steps)]
    return events, ns.stats.messages_sent


def test_a_group_past_the_message_size_goes_as_several_messages_with_the_same_statistics(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sender_module, "FLUSH_S", 60.0)  # after the first step the rest wait for remove()
    loop = Loop(steps=5)
    events: dict[int, list[dict[str, Any]]] = {}
    sent: dict[int, int] = {}
    for limit in (1 << 20, 1):  # all later steps in one message; one step per message (each is past 1 byte)
        monkeypatch.setattr(sender_module, "MESSAGE_BYTES", limit)
        events[limit], sent[limit] = _grouped_run(sidecar, f"size-{limit}", loop)
    assert [e["step"] for e in events[1]] == list(range(loop.steps))
    assert events[1] == events[1 << 20]
    assert sent == {1 << 20: 2 + 2, 1: 2 + loop.steps}


def test_a_sidecar_whose_welcome_does_not_take_bundles_gets_one_step_per_message_and_the_same_statistics(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sender_module, "FLUSH_S", 60.0)  # after the first step the rest wait for remove()
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
        events[run], sent[run] = _grouped_run(sidecar, run, loop)
    assert [e["step"] for e in events["older"]] == list(range(loop.steps))
    assert events["older"] == events["takes-bundles"]
    assert sent == {"takes-bundles": 2 + 2, "older": 2 + loop.steps}  # Hello and Goodbye around the steps
