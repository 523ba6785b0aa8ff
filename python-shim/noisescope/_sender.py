"""The sender: a bounded queue, a daemon pump thread and one gRPC Attach stream, reconnected with back-off.

The training thread only ever calls `submit`, which never blocks: when the queue is full, or
no sidecar is there to take a step, the step is dropped and counted.
"""
from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from . import _wire
from ._credentials import Credentials
from ._dense import DenseStep, serialize_request
from ._guard import Guard
from ._meter import LayerInfo, PendingStep, StepRecord, finish
from ._types import Recommendation

if TYPE_CHECKING:
    import grpc

    from .v1 import noisescope_pb2 as pb

logger = logging.getLogger("noisescope")

QUEUE_STEPS = 256  # measured steps waiting for the pump thread
OUTBOUND_MESSAGES = 4096  # messages waiting for gRPC on one stream
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
REFUSALS_LOGGED = 5

_END = object()  # ends a stream's request iterator: the client half-closes
_WAKE = object()  # wakes the pump thread when close() begins


class _Stream:
    """One Attach attempt: what waits to be sent on it, and whether it is over."""

    def __init__(self) -> None:
        self.outbound: queue.Queue[Any] = queue.Queue()
        self.over = threading.Event()


class Sender:
    def __init__(
        self,
        *,
        address: str,
        info: _wire.RankInfo,
        guard: Guard,
        on_recommendation: Callable[[Recommendation], None],
        credentials: Credentials | None = None,
    ) -> None:
        self._address = address
        self._credentials = credentials or Credentials()
        self._info = info
        self._layers: Sequence[LayerInfo] = info.layers
        self._guard = guard
        self._on_recommendation = on_recommendation
        # Private seam: sees every finished StepRecord before it is sent (tests check the measurement here).
        self.tap: Callable[[StepRecord], None] | None = None
        self._counters_lock = threading.Lock()
        self.messages_sent = 0
        self.dropped = 0
        self._dropped_at_welcome = 0  # dropped as of the last Welcome: a reconnect reports the difference
        self.refusals = 0
        self.connected = False
        self._warned_outage = False
        self._warned_statuses: set[tuple[str, str]] = set()
        self.protocol_mismatch: str | None = None  # the sidecar's words: no retry can succeed
        self.bundle_steps = True  # one StepBundle per measured step; off for a sidecar that predates it
        self._fresh_runtime()
        _restart_after_fork(self)

    def _fresh_runtime(self) -> None:
        """Everything a forked child must not share with its parent (threads, locks, streams)."""
        self._queue: queue.Queue[PendingStep] = queue.Queue(maxsize=QUEUE_STEPS)
        self._stop = threading.Event()  # close() began: flush, say goodbye, no new connections
        self._done = threading.Event()  # nothing left to say: the link thread ends
        self._lock = threading.Lock()
        self._stream: _Stream | None = None
        self._call: Any = None
        self._deadline = float("inf")
        self._threads: list[threading.Thread] = []
        self._needs_start = True
        self._closing = False
        # From a failed or lost stream until the next Welcome: the meter measures nothing meanwhile.
        # True only once an attempt failed, so a run's first steps are measured while it first connects.
        self._unreachable = False

    # ------------------------------------------------------------ training-thread side

    def start(self) -> None:
        if not self._needs_start or self._closing:
            return
        self._needs_start = False
        # Imported here, not on the link thread, so the first connection starts at once; and
        # the first stream exists already, so steps taken while it connects wait instead of dropping.
        import grpc  # noqa: F401

        from .v1 import noisescope_pb2_grpc  # noqa: F401

        with self._lock:
            self._stream = _Stream()
        self._threads = [
            threading.Thread(target=self._pump, name="noisescope-sender", daemon=True),
            threading.Thread(target=self._link, name="noisescope-link", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, pending: PendingStep) -> None:
        """Never blocks: a full queue drops the step and counts it."""
        if self._needs_start:
            self.start()  # the first step in a forked child restarts the threads
        if self._closing or self.protocol_mismatch is not None:
            self._count_dropped(1)
            return
        try:
            self._queue.put_nowait(pending)
        except queue.Full:
            self._count_dropped(1)

    def wanted(self) -> bool:
        """Whether a measurement could be delivered now (read by the training thread: no lock, no wait)."""
        return self.tap is not None or not (self._unreachable or self._closing or self.protocol_mismatch is not None)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float) -> None:
        """Flushes for at most `timeout` seconds, sends Goodbye, ends both threads; idempotent."""
        if self._closing:
            return
        self._closing = True
        self._deadline = time.monotonic() + max(0.0, timeout)
        self._stop.set()
        try:
            self._queue.put_nowait(_WAKE)  # type: ignore[arg-type]
        except queue.Full:
            pass  # the pump is busy anyway and sees _stop next
        for thread in self._threads:
            thread.join(max(0.0, self._deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            with self._lock:
                call = self._call
            self._done.set()
            if call is not None:
                call.cancel()  # the sidecar did not close in time
            for thread in self._threads:
                thread.join(0.2)
        self._done.set()
        self.connected = False

    # ------------------------------------------------------------ pump thread

    def _pump(self) -> None:
        try:
            while True:
                try:
                    pending = self._queue.get(timeout=0.1)
                except queue.Empty:
                    if self._stop.is_set():
                        break
                    continue
                if pending is _WAKE:
                    break  # queued after every step submitted before close()
                if time.monotonic() > self._deadline:
                    self._count_dropped(1)  # past remove()'s flush budget
                    continue
                self._forward(pending)
            self._say_goodbye()
        except Exception as error:
            self._guard.trip("the sender thread", error)
            self._done.set()

    def _forward(self, pending: PendingStep) -> None:
        record = finish(pending, self._layers)
        tap = self.tap
        if tap is not None:
            tap(record)
        messages = _wire.step_messages(record, self._info.world_size)
        if self.bundle_steps:
            messages = _wire.bundled(messages)
        if not self._offer(messages):
            self._count_dropped(1)
            if record.dense is not None:
                record.dense.release()

    def _offer(self, messages: Sequence[Any]) -> bool:
        """Queues a whole step on the current stream, or nothing when there is none or it is full."""
        with self._lock:
            stream = self._stream
            if stream is None or stream.over.is_set():
                return False
            if stream.outbound.qsize() + len(messages) > OUTBOUND_MESSAGES:
                return False
            for message in messages:
                stream.outbound.put_nowait(message)
            return True

    def _say_goodbye(self) -> None:
        with self._lock:
            stream = self._stream
            if stream is not None and not stream.over.is_set():
                stream.outbound.put_nowait(_wire.goodbye("watch removed", self.dropped))
                stream.outbound.put_nowait(_END)
                return
        self._done.set()  # not connected: nothing to say

    # ------------------------------------------------------------ link thread

    def _link(self) -> None:
        backoff = BACKOFF_FIRST_S
        try:
            while not self._done.is_set():
                welcomed = self._attach_once()
                if self._stop.is_set() or self._done.is_set() or self.protocol_mismatch is not None:
                    break
                if welcomed:
                    backoff = BACKOFF_FIRST_S
                self._done.wait(backoff)
                backoff = min(backoff * 2.0, BACKOFF_MAX_S)
        except Exception as error:
            self._guard.trip("the connection thread", error)
        finally:
            self.connected = False
            self._done.set()

    def _attach_once(self) -> bool:
        """One Attach stream, from Hello until it ends; True when the sidecar welcomed it."""
        import grpc

        from .v1 import noisescope_pb2 as pb

        welcomed = False
        failure: grpc.RpcError | None = None
        with self._lock:
            if self._done.is_set():
                if self._stream is not None:
                    self._stream.over.set()
                    self._count_dropped(_steps_left(self._stream))
                    self._stream = None
                return False
            stream = self._stream if self._stream is not None and not self._stream.over.is_set() else _Stream()
            self._stream = stream
        channel = self._credentials.channel(self._address)
        try:
            with self._lock:
                # The stub's method, with a serializer that passes dense chunks framed by hand.
                attach = channel.stream_stream(
                    "/noisescope.v1.NoiseScope/Attach",
                    request_serializer=serialize_request,
                    response_deserializer=pb.SidecarMessage.FromString,
                )
                call = self._call = attach(self._requests(stream), metadata=self._credentials.metadata or None)
            for reply in call:
                welcomed = self._on_reply(reply) or welcomed
        except grpc.RpcError as error:
            failure = error
        finally:
            with self._lock:
                self._stream = None
                self._call = None
                stream.over.set()
            self.connected = False
            self._unreachable = True
            self._count_dropped(_steps_left(stream))
            channel.close()
        if failure is not None and failure.code() == grpc.StatusCode.FAILED_PRECONDITION:
            self._check_protocol(f"FAILED_PRECONDITION: {failure.details() or ''}")  # logged even when remove() has begun
        if not self._stop.is_set() and self.protocol_mismatch is None:
            self._report_end(failure, welcomed)
        return welcomed

    def _requests(self, stream: _Stream) -> Iterator[pb.RankMessage]:
        """The request side of one stream: Hello, then whatever the pump queues, until _END."""
        self._count_sent()
        yield _wire.hello(self._info, self.dropped)
        while True:
            try:
                message = stream.outbound.get(timeout=0.2)
            except queue.Empty:
                if stream.over.is_set():
                    return
                continue
            if message is _END:
                return
            if isinstance(message, DenseStep):
                for frame in message.frames():
                    self._count_sent()
                    yield frame
                continue
            self._count_sent()
            yield message

    def _on_reply(self, reply: pb.SidecarMessage) -> bool:
        kind = reply.WhichOneof("kind")
        if kind == "welcome":
            self._unreachable = False  # first: whoever sees `connected` must find measuring wanted
            self.connected = True
            with self._counters_lock:
                dropped = self.dropped - self._dropped_at_welcome
                self._dropped_at_welcome = self.dropped
            # Back after an outage that cost measurements: say how many (one line, beside the outage's warning).
            level = logging.WARNING if dropped and self._warned_outage else logging.INFO if self._warned_outage else logging.DEBUG
            self._warned_outage = False
            logger.log(
                level,
                "noisescope: attached to the sidecar at %s (version %s) as run '%s' rank %d%s",
                self._address,
                reply.welcome.sidecar_version,
                reply.welcome.run,
                reply.welcome.rank,
                f"; {dropped} measurement(s) were dropped while it was unreachable" if dropped else "",
            )
            return True
        if kind == "refusal":
            if reply.refusal.code == 9:  # FAILED_PRECONDITION
                self._check_protocol(f"FAILED_PRECONDITION: {reply.refusal.message}")
            if self.bundle_steps and "RankMessage with no kind set" in reply.refusal.message:
                # A sidecar older than StepBundle: it reads our bundles as empty messages.
                self.bundle_steps = False
                logger.info("noisescope: the sidecar at %s predates step bundles; sending each step as separate messages", self._address)
            with self._counters_lock:
                self.refusals += 1
                refusals = self.refusals
            if refusals <= REFUSALS_LOGGED:
                logger.warning(
                    "noisescope: the sidecar refused a message (step %d, gRPC status %d): %s. This is a bug in "
                    "the hook; please report it.%s",
                    reply.refusal.step,
                    reply.refusal.code,
                    reply.refusal.message,
                    " Further refusals are only counted in .stats." if refusals == REFUSALS_LOGGED else "",
                )
        elif kind == "recommendation":
            self._on_recommendation(_wire.recommendation(reply.recommendation))
        return False

    def _check_protocol(self, details: str) -> None:
        """A protocol-version mismatch can never succeed on retry: one error saying what to upgrade, no more attempts."""
        if "protocol version" not in details or self.protocol_mismatch is not None:
            return
        self.protocol_mismatch = details
        logger.error(
            "noisescope: the sidecar at %s speaks another protocol version (%s). %s Measurements are not sent for the "
            "rest of this run and the hook does not retry; training continues unaffected.",
            self._address,
            details,
            _what_to_upgrade(details),
        )

    def _report_end(self, failure: grpc.RpcError | None, welcomed: bool) -> None:
        """One warning per outage, never one per retry."""
        import grpc

        code = failure.code() if failure is not None else None
        details = (failure.details() if failure is not None else None) or "the sidecar closed the stream"
        if welcomed:
            if not self._warned_outage:
                self._warned_outage = True
                logger.warning(
                    "noisescope: lost the sidecar at %s (%s); reconnecting with back-off. Training continues; "
                    "measurements are dropped until it is back.",
                    self._address,
                    details,
                )
        elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, None):
            if not self._warned_outage:
                self._warned_outage = True
                logger.warning(
                    "noisescope: no sidecar reachable at %s (%s). Training continues; measurements are dropped "
                    "until one is. Start one with `noisescope serve`, or pass watch(address=...) / set "
                    "NOISESCOPE_ADDRESS.",
                    self._address,
                    details,
                )
        else:
            key = (str(code), details)
            if key not in self._warned_statuses:
                self._warned_statuses.add(key)
                logger.warning(
                    "noisescope: the sidecar at %s ended this rank's stream with %s: %s. Training continues; "
                    "retrying with back-off.",
                    self._address,
                    code.name if code is not None else "no status",
                    details,
                )

    # ------------------------------------------------------------ counters

    def _count_sent(self) -> None:
        with self._counters_lock:
            self.messages_sent += 1

    def _count_dropped(self, steps: int) -> None:
        if steps:
            with self._counters_lock:
                self.dropped += steps


_VERSIONS = re.compile(r"hook speaks protocol version (\d+), this sidecar speaks (\d+)")


def _what_to_upgrade(details: str) -> str:
    """The older side, from the sidecar's message; both named when it does not say."""
    versions = _VERSIONS.search(details)
    hook, sidecar = (int(versions[1]), int(versions[2])) if versions else (None, None)
    python = "the Python hook on this machine (pip install -U noisescope)"
    node = "the sidecar (npm install noisescope@latest where `noisescope serve` runs)"
    if hook is not None and sidecar is not None and hook != sidecar:
        return f"Upgrade {python if hook < sidecar else node}."
    return f"Upgrade the older of {python} and {node}."


def _steps_left(stream: _Stream) -> int:
    """Steps queued on a stream that ended before sending them (each ends with a StepEnd)."""
    left = 0
    while True:
        try:
            message = stream.outbound.get_nowait()
        except queue.Empty:
            return left
        if isinstance(message, DenseStep):
            message.release()
        elif message is not _END and message.WhichOneof("kind") in ("step_end", "bundle"):
            left += 1


def _restart_after_fork(sender: Sender) -> None:
    """In a forked child (a DataLoader worker, say) the threads are gone: rebuild, start on first use."""
    if not hasattr(os, "register_at_fork"):
        return
    ref = weakref.ref(sender)

    def after_in_child() -> None:
        alive = ref()
        if alive is not None and not alive._closing:
            alive._fresh_runtime()
            alive._counters_lock = threading.Lock()
            alive.connected = False

    os.register_at_fork(after_in_child=after_in_child)
