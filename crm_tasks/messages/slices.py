"""Rendering a large plan on every core: a list's work split into contiguous slices, the first done in this
process and the others in forked processes, the results put back in order.

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
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
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


def processes_for(count: int, processes: int, min_slice: int | None = None) -> int:
    """How many processes work ``count`` items: at most ``processes`` (0: one per core), and at least
    ``min_slice`` items each (default MIN_SLICE); 1 means this process alone."""
    min_slice = min_slice or MIN_SLICE
    wanted = processes or cores()
    if wanted < 2 or "fork" not in multiprocessing.get_all_start_methods() or multiprocessing.current_process().daemon:
        return 1
    return max(1, min(wanted, count // min_slice))


def in_slices(work: Callable[[int, int], list], count: int, processes: int = 0, *,
              min_slice: int | None = None) -> list:
    """``work(start, stop)`` over ``range(count)`` in contiguous slices, the results concatenated in order:
    the same list as ``work(0, count)``."""
    n = processes_for(count, processes, min_slice)
    if n == 1:
        return work(0, count)
    global _WORK
    bounds = [count * i // n for i in range(n + 1)]
    slices = list(pairwise(bounds))
    _WORK = work
    try:
        with ProcessPoolExecutor(n - 1, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = [pool.submit(_work_slice, start, stop) for start, stop in slices[1:]]
            results = work(*slices[0])
            for (start, stop), future in zip(slices[1:], futures, strict=True):
                try:
                    results.extend(future.result())
                except BrokenProcessPool:
                    log.warning("a process working items %d to %d died; working them here instead", start, stop)
                    results.extend(work(start, stop))
    finally:
        _WORK = None
    return results


def _work_slice(start: int, stop: int) -> list:
    return _WORK(start, stop)
