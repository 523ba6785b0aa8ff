"""Our own failures end here: logged once, measurement switched off, training untouched."""
from __future__ import annotations

import logging
import threading
from typing import Callable

logger = logging.getLogger("noisescope")


class Guard:
    """A one-way switch like sentry's capture_internal_exceptions: the first internal error trips it."""

    def __init__(self) -> None:
        self._tripped = False
        self._lock = threading.Lock()
        self._on_trip: list[Callable[[], None]] = []

    @property
    def tripped(self) -> bool:
        return self._tripped

    def on_trip(self, callback: Callable[[], None]) -> None:
        self._on_trip.append(callback)

    def trip(self, where: str, error: BaseException) -> None:
        """Logs `error` once (with its traceback) and switches noisescope off; never raises."""
        with self._lock:
            if self._tripped:
                return
            self._tripped = True
        try:
            logger.error(
                "noisescope: internal error in %s; measurement is switched off for the rest of this run "
                "(training continues unaffected). Please report this with the traceback below.",
                where,
                exc_info=(type(error), error, error.__traceback__),
            )
            for callback in self._on_trip:
                callback()
        except Exception:  # a broken logging handler must not reach training either
            pass
