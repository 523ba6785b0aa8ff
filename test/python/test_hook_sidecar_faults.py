"""The hook against the real sidecar when things go wrong: restarts, refusals, a refused Hello, forks."""
from __future__ import annotations

import copy
import logging
import os
import signal
import threading
import time

import pytest
import torch

import noisescope
from conftest import Sidecar
from noisescope import _sender, _wire
from test_hook_support import Loop, make_model, make_optimizer, parameters_of, wait_connected, wait_for_events


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "noisescope" and r.levelno >= logging.WARNING]


def test_reconnects_after_the_sidecar_restarts_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="noisescope")
    first = Sidecar()
    port = first.address.rsplit(":", 1)[1]
    second: Sidecar | None = None
    try:
        model = make_model()
        optimizer = make_optimizer(model)
        ns = noisescope.watch(model, optimizer, address=first.address, run="restart")
        wait_connected(ns)
        Loop(steps=1).run(model, optimizer)
        wait_for_events(first, "step", "restart", 1)
        first.stop()
        wait_connected(ns, False)
        Loop(steps=2).run(model, optimizer)  # no sidecar: dropped and counted
        second = Sidecar("--port", port)  # the last --port wins
        assert second.address == first.address
        wait_connected(ns)
        Loop(steps=1).run(model, optimizer)
        ns.remove()
        steps = wait_for_events(second, "step", "restart", 1)
        assert steps[0]["step"] == 3 and not steps[0]["skipped"]
        assert ns.stats.dropped == 2
        # Hello and Goodbye told the new sidecar how many measurements this rank dropped.
        health = second.wait_for(lambda e: e["type"] == "health" and e["stepsCompleted"] == 1)
        assert (health["droppedByHooks"], health["refused"]) == (2, 0)
        second.wait_for(lambda e: e["type"] == "run" and e["run"] == "restart" and e["ended"])
    finally:
        first.stop()
        if second is not None:
            second.stop()
    # One warning for the outage, one on reconnecting that says what it cost.
    warnings = warnings_in(caplog)
    assert len(warnings) == 2 and "lost the sidecar" in warnings[0]
    assert "as run 'restart'" in warnings[1] and "2 measurement(s) were dropped while it was unreachable" in warnings[1]


def test_a_refused_message_is_logged_with_its_grpc_code_and_later_ones_only_counted(
    sidecar: Sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="noisescope")
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=sidecar.address, run="refused")
    records: list = []
    ns._sender.tap = records.append
    wait_connected(ns)
    Loop(steps=3).run(model, optimizer)
    wait_for_events(sidecar, "step", "refused", 3)
    step_end_of = {r.step: _wire.step_messages(r, 1)[-1] for r in records}

    def refusals_reach(n: int) -> None:
        deadline = time.monotonic() + 10
        while ns.stats.refusals < n:
            assert time.monotonic() < deadline, f"{ns.stats.refusals} refusals, expected {n}"
            time.sleep(0.01)

    # Through the sender's private seam: step 1 again, after step 2 ended (a step going backwards).
    assert ns._sender._offer([step_end_of[1]])
    refusals_reach(1)
    [refusal] = warnings_in(caplog)
    assert "step 1, gRPC status 11" in refusal and "goes backwards" in refusal  # OUT_OF_RANGE
    # Step 2 again: a duplicate. Then more: the first five are logged, the rest only counted.
    assert ns._sender._offer([step_end_of[2]] * 6)
    refusals_reach(7)
    logged = warnings_in(caplog)
    assert len(logged) == 5 and "step 2, gRPC status 6" in logged[1] and "already ended" in logged[1]  # ALREADY_EXISTS
    assert "only counted" in logged[-1]
    # The stream stayed open: later steps are accepted as usual.
    Loop(steps=1).run(model, optimizer)
    ns.remove()
    assert [e["step"] for e in wait_for_events(sidecar, "step", "refused", 4)] == [0, 1, 2, 3]
    assert (ns.stats.refusals, ns.stats.dropped) == (7, 0)
    health = sidecar.wait_for(lambda e: e["type"] == "health" and e["stepsCompleted"] == 4)
    assert health["refused"] == 7


def test_a_reconnection_keeps_the_session_and_so_the_step_history(
    sidecar: Sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="noisescope")
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=sidecar.address, run="same-session")
    records: list = []
    ns._sender.tap = records.append
    wait_connected(ns)
    Loop(steps=2).run(model, optimizer)
    wait_for_events(sidecar, "step", "same-session", 2)
    with ns._sender._lock:
        ns._sender._call.cancel()  # the stream breaks; the sidecar itself stays up
    wait_connected(ns, False)
    wait_connected(ns)
    # The sidecar still knows this rank ended step 1: the same session is a reconnection, not a new process.
    assert ns._sender._offer([_wire.step_messages(records[1], 1)[-1]])
    deadline = time.monotonic() + 10
    while ns.stats.refusals < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    Loop(steps=1).run(model, optimizer)
    ns.remove()
    assert [e["step"] for e in wait_for_events(sidecar, "step", "same-session", 3)] == [0, 1, 2]
    assert ns.stats.refusals == 1
    lost, refused = warnings_in(caplog)
    assert "lost the sidecar" in lost
    assert "step 1, gRPC status 6" in refused  # a new session would have restarted the history instead


def test_a_sidecar_that_ends_the_stream_with_an_error_is_reported_once(
    sidecar: Sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    with noisescope.watch(model, optimizer, address=sidecar.address, run="layout"):
        Loop(steps=1).run(model, optimizer)
    caplog.set_level(logging.WARNING, logger="noisescope")
    # Another model under the same run name: the sidecar ends each attempt with FAILED_PRECONDITION.
    other = torch.nn.Linear(3, 2)
    ns = noisescope.watch(other, torch.optim.SGD(other.parameters(), lr=0.1), address=sidecar.address, run="layout")
    try:
        deadline = time.monotonic() + 10
        while "FAILED_PRECONDITION" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.01)
        attempts = sidecar.wait_for(lambda e: e["type"] == "health" and e["refused"] >= 2, timeout=10)
        assert attempts["ranksConnected"] == 0  # it retried, and was refused again
    finally:
        ns.remove()
    warnings = warnings_in(caplog)
    assert len(warnings) == 1 and "already attached with 8 layers" in warnings[0]


def test_forked_data_loader_workers_do_not_disturb_the_stream(sidecar: Sidecar) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(96, 12), torch.randint(0, 5, (96,)))
    loader = DataLoader(data, batch_size=8, num_workers=2, multiprocessing_context="fork")
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=sidecar.address, run="fork")
    wait_connected(ns)
    for epoch in range(2):
        for j, (x, y) in enumerate(loader):  # workers fork while the stream is open
            torch.nn.functional.cross_entropy(model(x), y).div(4).backward()
            if j % 4 == 3:
                optimizer.step()
                optimizer.zero_grad()
    ns.remove()
    assert (ns.stats.dropped, ns.stats.refusals) == (0, 0)
    assert [e["step"] for e in wait_for_events(sidecar, "step", "fork", 6)] == list(range(6))
    sidecar.wait_for(lambda e: e["type"] == "run" and e["run"] == "fork" and e["ended"] and e["ranksConnected"] == 0)


def test_a_stalled_sidecar_never_blocks_training_nor_remove() -> None:
    """A sidecar that stops reading (SIGSTOP: alive, its socket open, nothing read) is a stall, not an outage."""
    sidecar = Sidecar()
    stopped = False

    def stall(on: bool) -> None:
        nonlocal stopped
        os.kill(sidecar.proc.pid, signal.SIGSTOP if on else signal.SIGCONT)
        stopped = on

    try:
        model = make_model()
        optimizer = make_optimizer(model)
        twin = copy.deepcopy(model)
        twin_optimizer = make_optimizer(twin)
        ns = noisescope.watch(model, optimizer, address=sidecar.address, run="stalled")
        wait_connected(ns)
        stall(True)
        Loop(steps=40).run(model, optimizer)  # returns: the hook only queues
        stall(False)
        # A stall shorter than the hook's queues loses nothing: every step arrives once the sidecar reads again.
        steps = wait_for_events(sidecar, "step", "stalled", 40)
        assert [s["step"] for s in steps] == list(range(40)) and ns.stats.dropped == 0
        # remove() during a stall gives up after its flush budget instead of waiting for the reader.
        stall(True)
        Loop(steps=10).run(model, optimizer)
        removing = threading.Thread(target=ns.remove, daemon=True)
        removing.start()
        removing.join(30)  # a hang detector, not a timing: remove()'s own budget is 2 s
        assert not removing.is_alive(), "remove() blocked on a stalled sidecar"
        stall(False)
        Loop(steps=40).run(twin, twin_optimizer)  # the same two loops without the hook
        Loop(steps=10).run(twin, twin_optimizer)
        assert all(torch.equal(a, b) for a, b in zip(parameters_of(model), parameters_of(twin)))
    finally:
        if stopped:
            os.kill(sidecar.proc.pid, signal.SIGCONT)
        sidecar.stop()


def test_a_sidecar_started_after_training_began_is_found_and_told_what_was_missed(
    free_address: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="noisescope")
    monkeypatch.setattr(_sender, "BACKOFF_MAX_S", 0.5)  # the hook's own retry loop, capped lower to keep the test short
    model = make_model()
    optimizer = make_optimizer(model)
    twin = copy.deepcopy(model)
    twin_optimizer = make_optimizer(twin)
    ns = noisescope.watch(model, optimizer, address=free_address, run="late")
    Loop(steps=3).run(model, optimizer)  # nobody listening: dropped and counted, training unaffected
    sidecar = Sidecar("--port", free_address.rsplit(":", 1)[1])
    try:
        wait_connected(ns)
        Loop(steps=2).run(model, optimizer)
        ns.remove()
        steps = wait_for_events(sidecar, "step", "late", 2)
        assert [s["step"] for s in steps] == [3, 4] and ns.stats.dropped == 3
        health = sidecar.wait_for(lambda e: e["type"] == "health" and e["stepsCompleted"] == 2)
        assert health["droppedByHooks"] == 3
    finally:
        sidecar.stop()
    Loop(steps=3).run(twin, twin_optimizer)
    Loop(steps=2).run(twin, twin_optimizer)
    assert all(torch.equal(a, b) for a, b in zip(parameters_of(model), parameters_of(twin)))
    warnings = warnings_in(caplog)
    assert len(warnings) == 2 and "no sidecar reachable" in warnings[0]
    assert "3 measurement(s) were dropped while it was unreachable" in warnings[1]
