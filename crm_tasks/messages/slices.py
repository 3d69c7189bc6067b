"""Rendering on more than one core: a list's work split into contiguous slices, worked in forked processes, the
results put back in order (``in_slices``, a large plan's render proof: the first slice in this process), or
handed back slice by slice as they are done (``forked``, a send batch's messages built beside its SMTP loop).

Why forked processes: rendering is pure Python (Jinja), which one process runs on one core whatever its threads;
a forked child starts with everything the parent computed (the compiled templates, the plan's rows, the
customers' products) without pickling any of it, and only its slice's results travel back. A child only
computes: it never touches the parent's open database transaction, and it leaves through ``os._exit``, which
closes none of the parent's connections behind its back.

Where forking is unavailable or not worth it (a small list, one core, a daemonic process that may not have
children), the whole list is worked here, in order, exactly as a slice would be. A child that dies (killed
for memory) leaves its slice to be worked here too; an exception raised in a slice (a message that does not
render) is raised here as itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from itertools import pairwise

log = logging.getLogger(__name__)

# Below this many items per process, starting a process and sending the results back costs more than it saves
# (a fork and a pickled context take about as long as rendering a few hundred messages).
MIN_SLICE = 5_000

# The work of the slices being worked now: set before the fork, so that the children inherit it.
_WORK: Callable[[int, int], list] | None = None


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def can_fork() -> bool:
    """Whether this process may fork workers: the platform forks, and it is no daemonic process (a Celery
    prefork child, a multiprocessing worker), which may not have children of its own."""
    return "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon


def processes_for(count: int, processes: int, min_slice: int | None = None) -> int:
    """How many processes work ``count`` items: at most ``processes`` (0: one per core), and at least
    ``min_slice`` items each (default MIN_SLICE); 1 means this process alone."""
    min_slice = min_slice or MIN_SLICE
    wanted = processes or cores()
    if wanted < 2 or not can_fork():
        return 1
    return max(1, min(wanted, count // min_slice))


@contextmanager
def forked(work: Callable[[int, int], list], processes: int) -> Iterator[Callable[[int, int], Future] | None]:
    """``processes`` forked processes that run ``work(start, stop)``: yields ``submit(start, stop)``, which returns
    a ``concurrent.futures.Future`` of that slice's results, or None where no process can be forked (then the
    caller works here). The children are forked when the first slice is submitted, so they see ``work`` and
    everything it closes over as it is then. A future whose child died raises ``BrokenProcessPool``; one whose
    slice raised raises that exception. On leaving, slices not yet started are cancelled."""
    global _WORK
    if processes < 1 or _WORK is not None or not can_fork():  # one pool at a time: _WORK is what children inherit
        yield None
        return
    _WORK = work
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"))
    try:
        yield lambda start, stop: pool.submit(_work_slice, start, stop)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _WORK = None


def in_slices(work: Callable[[int, int], list], count: int, processes: int = 0, *,
              min_slice: int | None = None) -> list:
    """``work(start, stop)`` over ``range(count)`` in contiguous slices, the results concatenated in order:
    the same list as ``work(0, count)``."""
    n = processes_for(count, processes, min_slice)
    if n == 1:
        return work(0, count)
    bounds = [count * i // n for i in range(n + 1)]
    slices = list(pairwise(bounds))
    with forked(work, n - 1) as submit:
        if submit is None:
            return work(0, count)
        futures = [submit(start, stop) for start, stop in slices[1:]]
        results = work(*slices[0])
        for (start, stop), future in zip(slices[1:], futures, strict=True):
            try:
                results.extend(future.result())
            except BrokenProcessPool:
                log.warning("a process working items %d to %d died; working them here instead", start, stop)
                results.extend(work(start, stop))
    return results


def _work_slice(start: int, stop: int) -> list:
    return _WORK(start, stop)
