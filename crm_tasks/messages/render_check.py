"""Proof that every message of a plan renders, on every core.

Planning renders each message once and keeps only its context: one bad template or profile must fail the
run before anything is stored. On one core that proof is most of a large plan (about 20 s of a 100k
offer), and the renders are independent, so batches of contexts go to forked workers that inherit the
compiled renderer, render, and return only the first failure of their batch. A process that may not
have children (a daemonic worker) renders the batches itself; so do small plans, which a pool's start
would only slow down.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterable

from crm_tasks.errors import RenderError
from crm_tasks.messages.render import Renderer

log = logging.getLogger(__name__)

BATCH = 2_000  # messages per task sent to a worker
MIN_PARALLEL = 5_000  # fewer messages render faster than a pool starts

_renderer: Renderer | None = None  # what a forked worker renders with


def processes_for(setting: int) -> int:
    """Workers to use: ``setting``, or one per core this process may run on when it is 0."""
    if setting:
        return setting
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _first_failure(start: int, jobs: list[tuple[str, dict]]) -> tuple[int, str] | None:
    renderer = _renderer
    for k, (template, context) in enumerate(jobs):
        try:
            renderer.render(template, context)
        except RenderError as exc:
            return start + k, str(exc)
    return None


class RenderCheck:
    """Collects (template, context) jobs and proves they all render; ``failure()`` is the first job that did
    not, as (index, error), once ``close()`` has waited for every batch."""

    def __init__(self, renderer: Renderer, processes: int, expected: int) -> None:
        self.renderer = renderer
        self.pending: list[tuple[str, dict]] = []
        self.submitted = 0
        self.results: list = []
        self.failures: list[tuple[int, str]] = []
        self.pool = None
        if processes > 1 and expected >= MIN_PARALLEL:
            self.pool = self._pool(processes)

    def _pool(self, processes: int):
        global _renderer
        _renderer = self.renderer  # inherited by the forked workers
        try:
            return multiprocessing.get_context("fork").Pool(processes)
        except (AssertionError, OSError, ValueError) as exc:  # a daemonic process may not fork workers
            log.info("rendering in this process (no worker processes: %s)", exc)
            return None

    def add(self, template: str, context: dict) -> None:
        self.pending.append((template, context))
        if len(self.pending) >= BATCH:
            self._submit()

    def _submit(self) -> None:
        jobs, self.pending = self.pending, []
        start, self.submitted = self.submitted, self.submitted + len(jobs)
        if self.pool is None:
            global _renderer
            _renderer = self.renderer
            if (failed := _first_failure(start, jobs)) is not None:
                self.failures.append(failed)
        else:
            self.results.append(self.pool.apply_async(_first_failure, (start, jobs)))

    def close(self) -> tuple[int, str] | None:
        """Wait for every batch; the first failure (lowest index), if any."""
        try:
            if self.pending:
                self._submit()
            self.failures += [f for f in (r.get() for r in self.results) if f is not None]
        finally:
            if self.pool is not None:
                self.pool.terminate()
                self.pool.join()
        return min(self.failures) if self.failures else None


def check_all(renderer: Renderer, jobs: Iterable[tuple[str, dict]], processes: int, expected: int):
    """The first (index, error) of ``jobs`` that does not render, or None."""
    check = RenderCheck(renderer, processes, expected)
    for template, context in jobs:
        check.add(template, context)
    return check.close()
