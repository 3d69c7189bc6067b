"""A time limit on pure-Python work that cannot be bounded by counting: a template's nested loops.

Bounds on values and ranges stop a template from building something huge, but three nested loops over
a few thousand items each build nothing and still run for minutes. A watchdog thread (one per
process, started on first use) raises ``Overtime`` inside a thread whose block has run past its
deadline, between two Python bytecodes, which is where a template's loops spend their time. The deadline
is in the thread's own CPU time (where the platform has per-thread CPU clocks, as Linux does): a loop that
builds nothing burns CPU, while a render that waits for the CPU on a busy machine (an Airflow worker with
other tasks, a test run beside benchmarks) is not stopped for the wait. Entering
and leaving the block costs a lock and a dict update, not a thread or a signal per message, so that
rendering 100,000 messages pays next to nothing for it. Any thread may use it (signals could only
bound the main thread).
"""

from __future__ import annotations

import ctypes
import os
import threading
import time


class Overtime(BaseException):
    """Raised inside a block that ran past its deadline. Not an Exception: no ``except Exception`` on a
    template's path may swallow it."""


class _Watchdog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deadlines: dict[int, tuple[int | None, float]] = {}  # thread id -> (CPU clock, deadline on it)
        self._fired: set[int] = set()  # threads told to stop, until they leave their block
        self._thread: threading.Thread | None = None
        self._tick = 0.05

    def start(self, seconds: float) -> None:
        tid = threading.get_ident()
        clock = _cpu_clock(tid)
        now = time.monotonic() if clock is None else time.clock_gettime(clock)
        with self._lock:
            self._deadlines[tid] = (clock, now + seconds)
            self._tick = min(self._tick, max(seconds / 4, 0.005))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._watch, name="crm-render-watchdog", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        tid = threading.get_ident()
        with self._lock:
            self._deadlines.pop(tid, None)
            if tid in self._fired:
                # Under the lock the watchdog cannot raise again; one it raised that is still pending is
                # dropped here, so that nothing outside the block is ever interrupted.
                self._fired.discard(tid)
                _raise_in(tid, None)

    def _watch(self) -> None:
        while True:
            time.sleep(self._tick)
            wall = time.monotonic()
            with self._lock:
                # Raised again at every tick until the thread leaves its block: Python drops an asynchronous
                # exception that lands in a generator's close() or a __del__ ("Exception ignored").
                for tid in [t for t, (clock, d) in self._deadlines.items() if d < _now(clock, wall)]:
                    self._fired.add(tid)
                    _raise_in(tid, Overtime)


def _cpu_clock(tid: int) -> int | None:
    """The CPU-time clock of thread ``tid`` (None where the platform has none: wall time is used there)."""
    try:
        return time.pthread_getcpuclockid(tid)
    except (AttributeError, OSError):
        return None


def _now(clock: int | None, wall: float) -> float:
    if clock is None:
        return wall
    try:
        return time.clock_gettime(clock)
    except OSError:  # the thread ended inside its block: nothing left to stop
        return float("-inf")


def _raise_in(tid: int, exc: type[BaseException] | None) -> None:
    """Make ``exc`` pending in thread ``tid`` (None: drop a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), ctypes.py_object(exc) if exc else None)


_WATCHDOG = _Watchdog()


def _fresh_watchdog_after_fork() -> None:
    """A forked child (crm_tasks/messages/slices.py renders there) has none of the parent's threads, and the
    parent's watchdog may have held its lock at the moment of the fork, which would stay held for ever in the
    child: the child starts a watchdog of its own."""
    global _WATCHDOG
    _WATCHDOG = _Watchdog()


os.register_at_fork(after_in_child=_fresh_watchdog_after_fork)


class time_limit:  # a class used as a function: with time_limit(2): ...
    """Raises ``Overtime`` in the ``with`` block once it has run ``seconds`` (a plain class, not a
    generator: it is entered once per message)."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __enter__(self) -> None:
        _WATCHDOG.start(self.seconds)

    def __exit__(self, *exc) -> None:
        _WATCHDOG.stop()
