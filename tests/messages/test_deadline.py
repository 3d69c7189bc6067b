"""The render time limit counts the rendering thread's own CPU time: a loop is stopped, a wait is not."""

from __future__ import annotations

import threading
import time

import pytest

from crm_tasks.messages.deadline import Overtime, time_limit


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_block_that_burns_its_cpu_time_is_stopped_and_the_thread_goes_on():
    started = time.perf_counter()
    with pytest.raises(Overtime), time_limit(0.2):
        _spin(10)
    assert time.perf_counter() - started < 5
    with time_limit(0.2):  # nothing pending afterwards
        _spin(0.05)


def test_a_block_that_waits_for_the_cpu_is_not_stopped_for_the_wait():
    # A render on a busy machine waits for a core; sleeping stands in for that wait (no CPU used).
    with time_limit(0.2):
        time.sleep(0.6)
        _spin(0.05)


def test_each_thread_is_held_to_its_own_cpu_time():
    outcomes: dict[str, str] = {}

    def run(name: str, work: float) -> None:
        try:
            with time_limit(0.3):
                _spin(work)
            outcomes[name] = "done"
        except Overtime:
            outcomes[name] = "stopped"

    threads = [threading.Thread(target=run, args=("loop", 30)), threading.Thread(target=run, args=("short", 0.05))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert outcomes == {"loop": "stopped", "short": "done"}
