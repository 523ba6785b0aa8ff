"""The sender's step hand-off: the stream's request iterator takes steps straight from the training thread.

No thread of the hook's sits between training and gRPC; a step is only taken by a stream the sidecar has
welcomed, so a step measured while none is there is tapped and counted dropped, exactly, never lost unseen;
every step reaches a real sidecar, in order, with the statistics the records say.
"""
from __future__ import annotations

import threading
import time

import noisescope
from conftest import Sidecar
from noisescope._sender import _EMPTY, _Handoff
from test_hook_support import Loop, make_model, make_optimizer, wait_connected, wait_for_events


def test_the_handoff_gives_every_item_once_in_order_and_refuses_what_does_not_fit() -> None:
    handoff = _Handoff(limit=3)
    assert [handoff.put(i) for i in range(4)] == [True, True, True, False]  # full: refused, nothing evicted
    assert [handoff.get(0.0) for _ in range(4)] == [0, 1, 2, _EMPTY]
    assert handoff.put(3) and len(handoff) == 1


def test_a_put_wakes_a_taker_waiting_on_the_other_thread() -> None:
    handoff = _Handoff(limit=100_000)
    taken: list[int] = []

    def take(n: int) -> None:
        while len(taken) < n:
            item = handoff.get(60.0)  # a missed wake-up leaves this waiting past the join below
            if item is not _EMPTY:
                taken.append(item)

    items = 20_000
    taker = threading.Thread(target=take, args=(items,))
    taker.start()
    for i in range(items):
        handoff.put(i)
        if i % 1000 == 0:
            time.sleep(0.001)  # let the taker empty the deque and wait again
    taker.join(50)
    assert not taker.is_alive() and taken == list(range(items))


def test_only_the_link_thread_is_the_hooks_own(sidecar: Sidecar) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    with noisescope.watch(model, optimizer, address=sidecar.address, run="one-thread") as ns:
        wait_connected(ns)
        Loop(steps=3).run(model, optimizer)
        # The sender's threads; the per-example worker (source="auto", or one left from an earlier test
        # for its idle second) is not the sender's.
        ours = sorted(t.name for t in threading.enumerate() if t.name.startswith("noisescope") and "per-example" not in t.name)
    assert ours == ["noisescope-link"]
    assert [e["step"] for e in wait_for_events(sidecar, "step", "one-thread", 3)] == [0, 1, 2]
    # Hello, the steps (coalesced: 1 to 3 messages, as the flush clock falls), Goodbye.
    assert 1 <= ns.stats.messages_sent - 2 <= 3 and ns.stats.dropped == 0


def test_steps_measured_while_no_sidecar_listens_are_each_tapped_and_counted_dropped(free_address: str) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=free_address, run="nobody")
    records: list = []
    ns._sender.tap = records.append  # measure although no sidecar listens (else the hooks stay off)
    try:
        deadline = time.monotonic() + 15
        while not ns._sender._unreachable:  # the first attempt has failed
            assert time.monotonic() < deadline
            time.sleep(0.01)
        before = ns.stats.dropped
        Loop(steps=12, sizes=(4, 4)).run(model, optimizer)
        while len(records) < 12 or ns.stats.dropped - before < 12:
            assert time.monotonic() < deadline + 15, (len(records), ns.stats.dropped - before)
            time.sleep(0.01)
        assert [r.step for r in records] == list(range(12)) and not any(r.skipped for r in records)
        assert ns.stats.dropped - before == 12 and ns.stats.queued == 0
    finally:
        ns.remove()


def test_steps_taken_before_the_welcome_wait_and_all_reach_the_sidecar(sidecar: Sidecar) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=sidecar.address, run="early")
    records: list = []
    ns._sender.tap = records.append
    Loop(steps=8, sizes=(4, 4)).run(model, optimizer)  # not waiting: most of these are queued before the Welcome
    ns.remove()
    events = wait_for_events(sidecar, "step", "early", 8)
    assert [e["step"] for e in events] == list(range(8)) and not any(e["skipped"] for e in events)
    assert [r.step for r in records] == list(range(8))
    assert 1 <= ns.stats.messages_sent - 2 <= 8 and ns.stats.dropped == 0  # steps coalesced into 1 to 8 messages
