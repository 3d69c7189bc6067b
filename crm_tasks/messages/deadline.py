"""A time limit on pure-Python work that cannot be bounded by counting: a template's nested loops.

Bounds on values and ranges stop a template from building something huge, but three nested loops over
a few thousand items each build nothing and still run for minutes. A watchdog thread (one per
process, started on first use) raises ``Overtime`` inside a thread whose block has run past its
deadline, between two Python bytecodes, which is where a template's loops spend their time. Entering
and leaving the block costs a lock and a dict update, not a thread or a signal per message, so that
rendering 100,000 messages pays next to nothing for it. Any thread may use it (signals could only
bound the main thread).
"""

from __future__ import annotations

import ctypes
import threading
import time


class Overtime(BaseException):  # noqa: N818 - not an Exception: no `except Exception` in a template's path may swallow it
    """Raised inside a block that ran past its deadline."""


class _Watchdog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deadlines: dict[int, float] = {}  # thread id -> monotonic deadline
        self._thread: threading.Thread | None = None
        self._tick = 0.05

    def start(self, seconds: float) -> None:
        with self._lock:
            self._deadlines[threading.get_ident()] = time.monotonic() + seconds
            self._tick = min(self._tick, max(seconds / 4, 0.005))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._watch, name="crm-render-watchdog", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        # Under the lock: once this thread is out of the table, the watchdog can no longer raise in it.
        # An Overtime raised just before is raised here at the latest, still inside the caller's block.
        with self._lock:
            self._deadlines.pop(threading.get_ident(), None)

    def _watch(self) -> None:
        while True:
            time.sleep(self._tick)
            now = time.monotonic()
            with self._lock:
                for tid in [t for t, d in self._deadlines.items() if d < now]:
                    del self._deadlines[tid]
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), ctypes.py_object(Overtime))


_WATCHDOG = _Watchdog()


class time_limit:  # noqa: N801 - used as a function: ``with time_limit(2):``
    """Raises ``Overtime`` in the ``with`` block once it has run ``seconds`` (a plain class, not a
    generator: it is entered once per message)."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __enter__(self) -> None:
        _WATCHDOG.start(self.seconds)

    def __exit__(self, *exc) -> None:
        _WATCHDOG.stop()
