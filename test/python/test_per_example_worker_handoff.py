"""The per-example worker's hand-off without a lock: wait() still returns only after everything submitted has run,
including work a worker leaving idle left queued, and a forked child starts its own worker."""
from __future__ import annotations

import os
import threading
import time

import pytest

from noisescope._per_example import _Overlap


def test_wait_returns_only_after_the_work_the_worker_is_running_has_finished() -> None:
    overlap = _Overlap()
    finished: list[int] = []
    for i in range(200):  # the worker mid-item when wait() is called, or just done, or not yet started
        overlap.submit(lambda i=i: (time.sleep(0.0002 * (i % 3)), finished.append(i)))
        if i % 2:
            time.sleep(0.0001)
        overlap.wait()
        assert finished == list(range(i + 1))
    assert overlap.submitted == 200 and not overlap._pending


def test_work_left_queued_by_a_worker_leaving_idle_still_runs_before_wait_returns() -> None:
    """A worker that times out idle leaves; a submit racing its exit may queue work with no worker to take it."""
    overlap = _Overlap()
    overlap.IDLE_S = 0.0005  # the worker leaves between most submits: the exit races the hand-off often
    done = threading.Event()
    ran: list[int] = []
    for i in range(300):
        overlap.submit(lambda i=i: ran.append(i))
        time.sleep(0.0005 * (i % 3))
        overlap.wait()
        assert ran == list(range(i + 1))
    # Queued after its worker left (what the race leaves): the step's wait() runs it on the waiting thread.
    deadline = time.monotonic() + 5
    while overlap.running and time.monotonic() < deadline:
        time.sleep(0.001)
    assert not overlap.running
    overlap._pending.append(None)
    overlap._queue.put(done.set)
    overlap.wait()
    assert done.is_set() and not overlap._pending


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_runs_its_work_on_its_own_worker() -> None:
    overlap = _Overlap()
    released = threading.Event()
    overlap.submit(lambda: released.wait(timeout=5))  # the parent's worker busy (and its count non-zero) at the fork
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread is not here; its queue and count are not the child's
        code = 1
        try:
            ran: list[int] = []
            overlap.submit(lambda: ran.append(threading.get_ident()))
            overlap.wait()
            code = 0 if ran and overlap._pending == [] else 2
        finally:
            os._exit(code)
    released.set()
    overlap.wait()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
