"""crm_tasks/messages/slices.py: a list's work on every core in forked processes, in order, with a slice's
error raised as itself and a dead child's slice worked again here."""

from __future__ import annotations

import os

import pytest

from crm_tasks.errors import RenderError
from crm_tasks.messages import slices
from crm_tasks.messages.slices import in_slices, processes_for


def _squares_with_pid(start: int, stop: int) -> list[tuple[int, int]]:
    return [(i * i, os.getpid()) for i in range(start, stop)]


def test_the_slices_run_in_several_processes_and_come_back_in_order():
    out = in_slices(_squares_with_pid, 1000, 3, min_slice=100)
    assert [v for v, _ in out] == [i * i for i in range(1000)]
    pids = [pid for _, pid in out]
    # The first slice here, the other two in forked processes (one child may take both: whichever is free).
    assert set(pids[:333]) == {os.getpid()} and os.getpid() not in pids[333:]
    assert len(set(pids[333:666])) == len(set(pids[666:])) == 1


@pytest.mark.parametrize(("count", "processes", "expected"), [
    (1000, 2, 1),      # under min_slice per process: not worth a fork
    (10_000, 1, 1),    # asked for one process
    (10_000, 2, 2),
    (10_000, 8, 4),    # at least min_slice each
])
def test_processes_are_only_used_for_slices_worth_a_fork(count, processes, expected):
    assert processes_for(count, processes, min_slice=2500) == expected


def test_one_process_works_everything_here():
    out = in_slices(_squares_with_pid, 50, 1, min_slice=1)
    assert {pid for _, pid in out} == {os.getpid()} and len(out) == 50


def _fails_at_700(start: int, stop: int) -> list[int]:
    if start <= 700 < stop:
        raise RenderError("customer C700: 'coupon' is undefined")
    return list(range(start, stop))


def test_an_error_in_a_forked_slice_is_raised_here_as_itself():
    with pytest.raises(RenderError, match="customer C700: 'coupon' is undefined"):
        in_slices(_fails_at_700, 1000, 2, min_slice=100)


PARENT = os.getpid()


def _dies_in_a_child(start: int, stop: int) -> list[int]:
    if os.getpid() != PARENT:
        os._exit(9)  # as if killed for memory
    return list(range(start, stop))


def test_a_slice_whose_process_died_is_worked_here(caplog):
    assert in_slices(_dies_in_a_child, 900, 3, min_slice=100) == list(range(900))
    assert "died; working them here instead" in caplog.text
    assert slices._WORK is None  # nothing left for a later fork to inherit


def test_forked_hands_back_each_slice_as_submitted_from_one_child():
    with slices.forked(_squares_with_pid, 1) as submit:
        futures = [submit(start, start + 10) for start in range(0, 50, 10)]
        out = [future.result() for future in futures]
    assert [v for part in out for v, _ in part] == [i * i for i in range(50)]
    pids = {pid for part in out for _, pid in part}
    assert len(pids) == 1 and os.getpid() not in pids
    assert slices._WORK is None


def test_forked_yields_nothing_to_submit_when_asked_for_no_process_or_already_inside_one():
    with slices.forked(_squares_with_pid, 0) as submit:
        assert submit is None
    # One pool at a time: inside one, the caller works here.
    with slices.forked(_squares_with_pid, 1) as outer, slices.forked(_squares_with_pid, 1) as inner:
        assert outer is not None and inner is None
        assert [v for v, _ in outer(0, 3).result()] == [0, 1, 4]
