"""A layer's per-example work in parts that the training thread, waiting at the step's end, can share with the worker.

The backward reaches a CNN's input layer last, so its terms (the costliest conv's) start on the worker just as the
training thread is about to wait for them. On the worker a layer's examples are split into a few parts (`parts`);
`map` runs them in order from a cursor, and a thread waiting in `Board.help` takes the next part not yet started:
two cores on what the step waits for. Results are returned in the parts' order whichever thread computed each, so
the sums are bitwise those of the worker alone. A queued layer wait() takes whole is split the same way (`run_split`)
but its parts run in a plain loop; inline terms are not split.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

import torch

# At most this many parts a layer; a part has at least SPLIT_ELEMENTS elements of its biggest per-example intermediate
# (the unfolded columns): smaller parts cost more in per-op dispatch than the sharing gains.
MOST_PARTS = 4
SPLIT_ELEMENTS = 1 << 17
# A part another thread took is waited for this long at most (it is running, not queued): then the layer fails and
# the guard switches the source off, never a hang.
PART_WAIT_S = 10.0


class _Local(threading.local):
    board: Board | None = None  # set on the worker thread: its layers' parts are posted here
    split = False  # this thread runs the overlap's work (the worker, or wait() taking a queued layer): split it


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
        _local.split = True

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


def run_split(work: Callable[[], None]) -> None:
    """work() with its layers split as the worker splits them (not posted): the sums are the same, bitwise, whichever
    thread took a queued layer."""
    _local.split = True
    try:
        work()
    finally:
        _local.split = False


def parts(examples: int, elements_per_example: int) -> list[slice]:
    """Example ranges for `map` in the overlap's work (one range inline): up to MOST_PARTS of ≥ SPLIT_ELEMENTS each."""
    count = 1 if not _local.split else min(MOST_PARTS, examples, round(examples * elements_per_example / SPLIT_ELEMENTS))
    if count <= 1:
        return [slice(0, examples)]
    step = -(-examples // count)
    return [slice(i, min(i + step, examples)) for i in range(0, examples, step)]


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
