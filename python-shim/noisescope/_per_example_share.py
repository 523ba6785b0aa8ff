"""A layer's per-example work in chunks that the training thread, waiting at the step's end, can share with the worker.

The backward reaches a CNN's input layer last, so its terms (the costliest conv's) start on the worker just as the
training thread is about to wait for them. The convolutions' unfold + bmm already runs CACHED_ELEMENTS-sized chunks of
examples, each into its own slice of the result; on the worker `map` posts those chunks, runs them in order from a
cursor, and a thread waiting in `Board.help` takes the next one not yet started: two cores on what the step waits for.
The chunks are the same on every thread and inline, so the sums are bitwise the same whichever thread ran what.
(Splitting layers into extra parts for sharing was tried: the worker's extra ops per part made it finish later, and
the step waited longer, bench_per_example_overhead.py --wait.)
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

import torch

# A part another thread took is waited for this long at most (it is running, not queued): then the layer fails and
# the guard switches the source off, never a hang.
PART_WAIT_S = 10.0


class _Local(threading.local):
    board: Board | None = None  # set on the worker thread: its layers' parts are posted here


_local = _Local()


class Board:
    """Where the worker posts the parts of the layer it is computing; `changed` (the overlap's condition) is notified
    when parts are posted or finished."""

    def __init__(self, changed: threading.Condition) -> None:
        self.changed = changed
        self.posted: _Parts | None = None

    def serve(self) -> None:
        """Marks the calling thread (the worker) as one whose layers are split and posted here."""
        _local.board = self

    def open(self) -> bool:
        """Whether a posted layer has parts not started (caller holds `changed`)."""
        parts = self.posted
        return parts is not None and parts.error is None and parts.next < len(parts.items)

    def help(self) -> bool:
        """Runs one part of the posted layer, if one is left; whether it did. Never raises (errors go to the layer)."""
        with self.changed:
            parts = self.posted
            index = None if parts is None else parts.claim()
        if index is None:
            return False
        parts.run(index, helper=True)  # type: ignore[union-attr]
        return True


class _Parts:
    def __init__(self, board: Board, fn: Callable[[Any], Any], items: Sequence[Any]) -> None:
        self.board, self.fn, self.items = board, fn, items
        self.results: list[Any] = [None] * len(items)
        self.error: BaseException | None = None
        self.next = 0
        self.finished = 0

    def claim(self) -> int | None:
        """The next part not started (caller holds the board's condition)."""
        if self.next >= len(self.items) or self.error is not None:
            return None
        self.next += 1
        return self.next - 1

    def run(self, index: int, helper: bool) -> None:
        result, error = None, None
        try:
            if helper:  # the training thread: its grad mode is on; the worker's job has set no_grad for itself
                with torch.no_grad():
                    result = self.fn(self.items[index])
            else:
                result = self.fn(self.items[index])
        except BaseException as caught:  # noqa: BLE001 — handed to the worker's map, which raises it into its guard
            error = caught
        with self.board.changed:
            self.results[index] = result
            if error is not None and self.error is None:
                self.error = error
            self.finished += 1
            self.board.changed.notify_all()


def map(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:  # noqa: A001 — the builtin's meaning
    """[fn(item) for item in items], parts of it run by a thread in Board.help when this one is the worker; the first
    error raised by any part is raised here (after every started part has finished)."""
    board = _local.board
    if board is None or len(items) < 2:
        return [fn(item) for item in items]
    shared = _Parts(board, fn, items)
    with board.changed:
        board.posted = shared
        board.changed.notify_all()  # a waiting training thread wakes to help
    try:
        while True:
            with board.changed:
                index = shared.claim()
            if index is None:
                break
            shared.run(index, helper=False)
    finally:
        with board.changed:
            board.posted = None
            started = shared.next
            while shared.finished < started:  # parts a helper took: running now, bounded by their size
                if not board.changed.wait(timeout=PART_WAIT_S) and shared.finished < started:
                    raise RuntimeError(f"a shared per-example part did not finish within {PART_WAIT_S} s")
    if shared.error is not None:
        raise shared.error
    return shared.results
