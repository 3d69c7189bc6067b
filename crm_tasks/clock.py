"""Business time: which day a run is about, where that day ends, and how long each step took.

Every stage reasons in business days of a time zone, never in ``now()``: the partition
a run names is its whole truth. These small pure functions are shared by ingest,
segments, campaigns and cleanup, so a change here is a change for all of them.
"""

from __future__ import annotations

import calendar
import time
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from crm_tasks.errors import ConfigError


def cutoff_for(as_of: date, tz: str) -> datetime:
    """The end of the business day ``as_of``: the next local midnight, in UTC."""
    local = datetime.combine(as_of + timedelta(days=1), datetime.min.time(), tzinfo=ZoneInfo(tz))
    return local.astimezone(UTC)


class Phases(dict):
    """Seconds per step of a run (recompute, cleanup): where the time goes, for the log and the benchmark."""

    def __init__(self) -> None:
        super().__init__()
        self._last = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self[name] = round(self.get(name, 0.0) + now - self._last, 3)
        self._last = now


MAX_RANGE_DAYS = 3660


def date_range(start: str, end: str, start_name: str, end_name: str) -> list[date]:
    """Every date from ``start`` to ``end`` inclusive, from trigger-form text; errors name the fields."""
    try:
        first, last = date.fromisoformat(start), date.fromisoformat(end)
    except ValueError:
        raise ConfigError(f"{start_name}/{end_name} must be dates in YYYY-MM-DD form, got {start!r}, {end!r}") from None
    if last < first:
        raise ConfigError(f"{end_name} {last} is before {start_name} {first}")
    if (last - first).days >= MAX_RANGE_DAYS:
        raise ConfigError(f"a range of more than {MAX_RANGE_DAYS} days is refused; split it")
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def business_dates(
    start: str | None,
    end: str | None,
    interval_start: datetime | None,
    interval_end: datetime | None,
    run_after: datetime,
    tz: str,
) -> list[date]:
    """The partition dates a run loads.

    An explicit range (trigger-form parameters) wins; otherwise the local date
    of the run's data interval; a run without one (manual or asset-triggered)
    loads the local day before it was triggered. Never ``now()``.
    """
    zone = ZoneInfo(tz)
    if start or end:
        return date_range(start or end, end or start, "start_date", "end_date")  # type: ignore[arg-type]
    if interval_start is not None and interval_end is not None and interval_end > interval_start:
        return [interval_start.astimezone(zone).date()]
    return [run_after.astimezone(zone).date() - timedelta(days=1)]


def segment_dates(as_of: str | None, through: str | None, loaded_dates: list[str], latest: date | None,
                  fallback: date | None) -> list[date]:
    """The as-of dates a segments run computes, in order.

    An explicit date (trigger form) wins, with ``through`` for a backfill range. A run
    triggered by ingest computes as of the latest date it loaded, but never before the
    latest recorded recompute: a corrected old partition changes today's segments, and
    must not undo the history recorded since. Otherwise: ``fallback``, the latest
    loaded partition.
    """
    if through and not as_of:
        raise ConfigError("through needs an as_of date to start from")
    if as_of:
        return date_range(as_of, through or as_of, "as_of", "through")
    if loaded_dates:
        newest = max(date.fromisoformat(d) for d in loaded_dates)
        return [max(newest, latest) if latest else newest]
    if fallback is None:
        raise ConfigError("nothing has been ingested yet and no as_of date was given")
    return [fallback]


def campaign_dates(as_of: str | None, tz: str, logical_date: datetime | None, run_after: datetime) -> date:
    """The occurrence day a campaign run plans: the trigger form's date, else the run's local date.

    A scheduled run's date is that of its logical date (the cron firing) in the schedule's
    time zone; a manual run without a date plans the day it was triggered.
    """
    if as_of:
        return date_range(as_of, as_of, "as_of", "as_of")[0]
    return (logical_date or run_after).astimezone(ZoneInfo(tz)).date()


def months_before(day: date, months: int) -> date:
    """The same day ``months`` months earlier (the month's last day where it is shorter)."""
    index = day.year * 12 + day.month - 1 - months
    year, month = divmod(index, 12)
    return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))


def start_of(day: date, tz: str) -> datetime:
    """Local midnight at the start of ``day``, in UTC."""
    return cutoff_for(day - timedelta(days=1), tz)


def cleanup_as_of(interval_end: datetime | None, run_after: datetime, tz: str) -> date:
    """The business day a DAG run cleans as of: the local day before its data interval ends (the last
    complete day of the week it covers); for a manual run, the day before it was triggered. Never now()."""
    return (interval_end or run_after).astimezone(ZoneInfo(tz)).date() - timedelta(days=1)


def running_from(moment: datetime):
    """A clock that starts at ``moment`` and runs at the speed of real time: delivering a plan for a past
    date as if on that day (benchmarks, tests, replays), with real waits between retries."""
    start = time.monotonic()
    return lambda: moment + timedelta(seconds=time.monotonic() - start)


def report_as_of(as_of: str | None, announced: list[str], interval_end: datetime | None, run_after: datetime,
                 tz: str) -> date:
    """The day a results refresh measures up to: the trigger form's date, else the latest as-of date the
    triggering segment recomputes announced, else (a daily run) the local day before the run. Never now()."""
    if as_of:
        return date_range(as_of, as_of, "as_of", "as_of")[0]
    if announced:
        return max(date.fromisoformat(d) for d in announced)
    return cleanup_as_of(interval_end, run_after, tz)


def months_up_to(day: date, months: int) -> list[date]:
    """The first days of the ``months`` months ending with ``day``'s, and of the month after (oldest first)."""
    index = day.year * 12 + day.month - 1
    return [date(i // 12, i % 12 + 1, 1) for i in range(index - months + 1, index + 2)]
