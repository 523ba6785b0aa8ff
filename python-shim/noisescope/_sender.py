"""The sender: a bounded queue, one gRPC Attach stream that drains it, reconnected with back-off.

The training thread only ever calls `submit`, which never blocks: when the queue is full, or
no sidecar is there to take a step, the step is dropped and counted. The stream's request iterator
(on grpcio's thread) takes steps straight from the queue and builds their messages: no thread of
ours sits between the training thread and gRPC, so a measured step wakes one thread fewer, and
every thread hop costs the training thread a GIL hand-off. Between streams the link thread drains
the queue (each step tapped, then dropped and counted).

Steps are coalesced: a step wakes the iterator at once only after FLUSH_S without one (a lone or
slow step goes as it comes); within FLUSH_S of the last, steps wait for the iterator's next look, or
until STEPS_PER_MESSAGE of them wait. The steps it takes go as one StepBundles message to a sidecar
that takes them. Each wake-up and each gRPC message costs the training thread GIL hand-offs with
grpcio's threads; on a small model that, not the arithmetic, was most of the hook's cost.
"""
from __future__ import annotations

import collections
import logging
import os
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

QUEUE_STEPS = 256  # measured steps waiting for the stream
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
REFUSALS_LOGGED = 5
STEPS_PER_MESSAGE = 32  # steps that wake the request iterator at once, and the most in one message
MESSAGE_BYTES = 1 << 20  # the most steps' bytes in one StepBundles: far below the sidecar's gRPC limit (16 MiB default)
FLUSH_S = 0.025  # the longest a step waits for others: the dashboard and recommendations see it within this

_WAKE = object()  # queued by close() after every step submitted before it: say goodbye


class _Stream:
    """One Attach attempt: whether the sidecar welcomed it, and whether it is over."""

    def __init__(self) -> None:
        self.welcomed = threading.Event()
        self.over = threading.Event()


class _Messages(list):  # type: ignore[type-arg]
    """Messages queued as they are (the `_offer` seam), not built from a step."""


_EMPTY = object()  # what _Handoff.get returns when nothing came


class _Handoff:
    """The bounded step queue: a deque, and a lock used as a wake-up flag (released: something was put).

    queue.Queue's put costs the training thread 10–40 µs (its Condition's Python bookkeeping, on cold
    caches after a backward); this is one append and at most one lock release.
    """

    def __init__(self, limit: int) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._limit = limit
        self._wake = threading.Lock()
        self._wake.acquire()
        self.wake_at = 1  # items that wake the taker at once
        self.interval = 0.0  # after a gather took items, fewer than wake_at wait this long for the next look
        self._quiet_until = 0.0  # monotonic time: a put after it wakes the taker

    def put(self, item: Any, urgent: bool = False) -> bool:
        """Never blocks: False when full."""
        if len(self._items) >= self._limit:
            return False
        self._items.append(item)
        if urgent or len(self._items) >= self.wake_at or time.monotonic() >= self._quiet_until:
            try:
                self._wake.release()
            except RuntimeError:
                pass  # released already: the taker has not looked since
        return True

    def gather(self, limit: int, timeout: float) -> list[Any]:
        """Up to `limit` of the oldest items, once woken (see put) or the interval since the last gather that took
        some is over, else after `timeout` seconds; maybe none."""
        if len(self._items) >= self.wake_at:
            self._wake.acquire(False)  # clears the flag: what it said is here
        else:
            quiet = self._quiet_until - time.monotonic()
            self._wake.acquire(timeout=quiet if quiet > 0 else timeout)
        taken: list[Any] = []
        while len(taken) < limit:
            try:
                taken.append(self._items.popleft())
            except IndexError:
                break
        if taken:
            self._quiet_until = time.monotonic() + self.interval
        return taken

    def get(self, timeout: float) -> Any:
        """The oldest item, waiting at most `timeout` seconds for one; _EMPTY if none came (or, rarely, sooner)."""
        try:
            return self._items.popleft()
        except IndexError:
            pass
        if timeout > 0:
            self._wake.acquire(timeout=timeout)
        else:
            self._wake.acquire(False)
        try:
            return self._items.popleft()
        except IndexError:
            return _EMPTY

    def __len__(self) -> int:
        return len(self._items)


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
        self.takes_bundles = False  # the sidecar's Welcome said it reads StepBundles (several steps a message)
        self.steps_per_message = STEPS_PER_MESSAGE  # private switch: 1 sends (and wakes) one step at a time
        self._fresh_runtime()
        _restart_after_fork(self)

    def _fresh_runtime(self) -> None:
        """Everything a forked child must not share with its parent (threads, locks, streams)."""
        self._queue = _Handoff(QUEUE_STEPS)  # PendingStep | _Messages | _WAKE
        self._queue.wake_at = max(1, self.steps_per_message)  # the request iterator keeps it so
        self._stop = threading.Event()  # close() began: flush, say goodbye, no new connections
        self._done = threading.Event()  # nothing left to say (or close() ran out of time): the link thread ends
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
        self._threads = [threading.Thread(target=self._link, name="noisescope-link", daemon=True)]
        for thread in self._threads:
            thread.start()

    def submit(self, pending: PendingStep) -> None:
        """Never blocks: a full queue drops the step and counts it."""
        if self._needs_start:
            self.start()  # the first step in a forked child restarts the threads
        if self._closing or self.protocol_mismatch is not None:
            self._count_dropped(1)
            return
        if not self._queue.put(pending):
            self._count_dropped(1)

    def wanted(self) -> bool:
        """Whether a measurement could be delivered now (read by the training thread: no lock, no wait)."""
        return self.tap is not None or not (self._unreachable or self._closing or self.protocol_mismatch is not None)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def close(self, timeout: float) -> None:
        """Flushes for at most `timeout` seconds, sends Goodbye, ends both threads; idempotent."""
        if self._closing:
            return
        self._closing = True
        self._deadline = time.monotonic() + max(0.0, timeout)
        self._stop.set()
        self._queue.put(_WAKE, urgent=True)  # when full, whoever drains the queue sees _stop once it is empty
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

    # ------------------------------------------------------------ steps into messages

    def _messages(self, item: Any) -> Sequence[Any]:
        """A queued item's wire messages (a step is finished, tapped and built here, off the training thread)."""
        if isinstance(item, _Messages):
            return item
        record = finish(item, self._layers)
        tap = self.tap
        if tap is not None:
            tap(record)
        messages = _wire.step_messages(record, self._info.world_size)
        return _wire.bundled(messages) if self.bundle_steps else messages

    def _drop(self, item: Any) -> None:
        """A queued step no stream will carry: tapped like a sent one, its dense buffers freed, counted."""
        if item is _WAKE:
            return
        if isinstance(item, _Messages):
            self._count_dropped(_steps_in(item))
            return
        self._count_dropped(1)
        tap = self.tap
        if tap is not None:
            tap(finish(item, self._layers))
        if item.dense is not None:
            item.dense.release()

    def _offer(self, messages: Sequence[Any]) -> bool:
        """Queues messages for the current stream as they are, or nothing when there is none or the queue is full."""
        with self._lock:
            stream = self._stream
            if stream is None or stream.over.is_set():
                return False
        return self._queue.put(_Messages(messages), urgent=True)

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
                self._drain(backoff)
                if self._stop.is_set():
                    break
                backoff = min(backoff * 2.0, BACKOFF_MAX_S)
            self._drain(0.0)  # whatever is left when no stream will come
        except Exception as error:
            self._guard.trip("the connection thread", error)
        finally:
            self.connected = False
            self._done.set()

    def _drain(self, seconds: float) -> None:
        """Between streams, for `seconds` (or until close() begins): queued steps are dropped, each tapped first."""
        until = time.monotonic() + seconds
        while not self._done.is_set():
            item = self._queue.get(timeout=min(0.1, until - time.monotonic()))
            if item is _EMPTY:
                if self._stop.is_set() or time.monotonic() >= until:
                    return
                continue
            if item is _WAKE:
                return
            self._drop(item)

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
                if self._on_reply(reply):
                    welcomed = True
                    stream.welcomed.set()
        except grpc.RpcError as error:
            failure = error
        finally:
            with self._lock:
                self._stream = None
                self._call = None
                stream.over.set()
            self.connected = False
            self._unreachable = True
            channel.close()
        if failure is not None and failure.code() == grpc.StatusCode.FAILED_PRECONDITION:
            self._check_protocol(f"FAILED_PRECONDITION: {failure.details() or ''}")  # logged even when remove() has begun
        if not self._stop.is_set() and self.protocol_mismatch is None:
            self._report_end(failure, welcomed)
        return welcomed

    def _requests(self, stream: _Stream) -> Iterator[Any]:
        """The request side of one stream: Hello, then the queued steps' messages, then Goodbye once close() began."""
        self._count_sent()
        yield _wire.hello(self._info, self.dropped)
        # Steps stay queued until the sidecar has welcomed this stream: one taken by a stream that then fails
        # would be lost uncounted; left queued, it is tapped and counted dropped by the link thread.
        while not stream.welcomed.wait(0.2):
            if stream.over.is_set() or self._done.is_set():
                return
        taken: collections.deque[Any] = collections.deque()  # out of the queue, not yet handed to gRPC
        try:
            goodbye = False
            while not goodbye and not stream.over.is_set():
                per_message = max(1, self.steps_per_message)
                self._queue.wake_at, self._queue.interval = per_message, FLUSH_S if per_message > 1 else 0.0
                taken.extend(self._queue.gather(per_message, 0.2))
                if not taken:
                    if self._stop.is_set():
                        break  # close() began and every step is out (its wake-up did not fit in the queue)
                    continue
                together: list[Any] = []  # consecutive steps' StepBundles, for one message
                together_bytes = 0
                while taken:
                    item = taken.popleft()
                    if item is _WAKE:
                        goodbye = True  # queued after every step submitted before close()
                        continue
                    if goodbye or stream.over.is_set() or time.monotonic() > self._deadline:
                        self._drop(item)  # the stream ended while this waited, or past remove()'s flush budget
                        continue
                    messages = self._messages(item)
                    if per_message > 1 and self.takes_bundles and len(messages) == 1:
                        single = _wire.one_bundle(messages[0])
                        if single is not None:
                            size = single.ByteSize()
                            if together and together_bytes + size > MESSAGE_BYTES:
                                yield self._sent(_wire.several(together))
                                together, together_bytes = [], 0
                            together.append(single)
                            together_bytes += size
                            continue
                    if together:
                        yield self._sent(_wire.several(together))
                        together, together_bytes = [], 0
                    for message in messages:
                        if isinstance(message, DenseStep):
                            for frame in message.frames():
                                yield self._sent(frame)
                            continue
                        yield self._sent(message)
                if together:
                    yield self._sent(_wire.several(together))
            if not goodbye and stream.over.is_set():
                return  # the stream ended: the link thread drains what is left
        except Exception as error:  # our own bug: never grpcio's "Exception iterating requests"
            self._guard.trip("the sender", error)
            self._done.set()
            return
        finally:
            while taken:  # gRPC stopped asking (the stream ended) while steps it took waited behind a message
                self._drop(taken.popleft())
        self._count_sent()
        yield _wire.goodbye("watch removed", self.dropped)

    def _on_reply(self, reply: pb.SidecarMessage) -> bool:
        kind = reply.WhichOneof("kind")
        if kind == "welcome":
            self.takes_bundles = reply.welcome.takes_bundles  # read by the request iterator once it sees `welcomed`
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
                logger.warning("noisescope: %s", _unreachable(self._address, details, self._credentials.tls))
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

    def _sent(self, message: Any) -> Any:
        self._count_sent()
        return message

    def _count_dropped(self, steps: int) -> None:
        if steps:
            with self._counters_lock:
                self.dropped += steps


# grpc's words when a TLS handshake failed: the wrong CA, a name the certificate lacks, no client certificate.
_TLS_FAILED = re.compile(r"handshake failed|Hostname Verification|TSI_", re.IGNORECASE)


def _unreachable(address: str, details: str, tls: bool) -> str:
    """The first failed connection, with what to check: a failed TLS handshake means a sidecar answered."""
    if tls and _TLS_FAILED.search(details):
        return (
            f"the sidecar at {address} did not complete the TLS handshake ({details}). tls_ca (NOISESCOPE_TLS_CA) "
            "must be the CA that signed its certificate, tls_server_name a name in that certificate when the address's "
            "host is not, a sidecar started with --tls-client-ca needs tls_cert and tls_key, and one started without "
            "--tls-cert serves no TLS. Training continues; measurements are dropped until it connects."
        )
    # A sidecar serving TLS closes a plain-text connection at once (grpc: "Socket closed").
    plain_to_tls = "" if tls or "Socket closed" not in details else (
        " If it serves TLS (--tls-cert), pass watch(tls_ca=...) or set NOISESCOPE_TLS_CA."
    )
    return (
        f"no sidecar reachable at {address} ({details}). Training continues; measurements are dropped until one is. "
        f"Start one with `noisescope serve`, or pass watch(address=...) / set NOISESCOPE_ADDRESS.{plain_to_tls}"
    )


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


def _steps_in(messages: Sequence[Any]) -> int:
    """Steps among messages no stream will send (each ends with a StepEnd or is a bundle)."""
    steps = 0
    for message in messages:
        if isinstance(message, DenseStep):
            message.release()
        elif message.WhichOneof("kind") in ("step_end", "bundle"):
            steps += 1
    return steps


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
