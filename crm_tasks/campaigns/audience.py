"""Who a campaign's trigger selects on a date, with the occurrence each customer is selected for.

One query per campaign narrows a million profiles to the few the trigger can
match (an index-free prefilter on the date's text, a superset by at most a day
either side for instants), then pandas applies the exact rule to that handful:
time zones turn an instant into the customer's own local date, and 29 February
moves to 28 February (or 1 March) in years without one.
"""

from __future__ import annotations

import difflib
from datetime import UTC, date, datetime, timedelta

import pandas as pd
from sqlalchemy import Connection, String, and_, cast, func, or_, select

from crm_tasks.campaigns.definitions import TIMESTAMP_FIELDS, Campaign, DateTrigger
from crm_tasks.errors import ConfigError
from crm_tasks.segments.rules import recurring_month_days
from crm_tasks.store.models import Customer, CustomerMetrics, Segment, SegmentMembership, SegmentStatus

# Profile columns every plan needs (consent, address, language, time zone) and the render context uses.
PROFILE = (Customer.customer_id, Customer.email, Customer.email_consent, Customer.locale, Customer.timezone,
           Customer.first_name)
COLUMNS = ["customer_id", "email", "email_consent", "locale", "timezone", "first_name"]


def event_date(as_of: date, trigger: DateTrigger) -> date:
    """The date the profile field must hold (or recur on) for a message on ``as_of``."""
    return as_of - timedelta(days=trigger.offset_days)


def match_dates(dates: pd.Series, event: date, trigger: DateTrigger) -> tuple[pd.Series, pd.Series]:
    """Which local dates (datetime64, NaT for none) trigger on ``event``; and the whole years since each."""
    valid = dates.notna()
    years = pd.Series(event.year - dates.dt.year, index=dates.index)
    if trigger.recurrence == "once":
        return valid & (dates == pd.Timestamp(event)), years
    md = dates.dt.strftime("%m-%d")
    mask = valid & md.isin(recurring_month_days(event, trigger.feb29)) & (years >= trigger.min_years)
    return mask, years


def _segment_ids(conn: Connection, names: list[str]) -> dict[str, int]:
    """Segment ids by name; an unknown or removed name is an error that lists the nearest."""
    rows = {r.name: r for r in conn.execute(select(Segment.id, Segment.name, Segment.status))}
    out = {}
    for name in names:
        row = rows.get(name)
        if row is None:
            close = difflib.get_close_matches(name, list(rows), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "; run `crm segments list` for the names"
            raise ConfigError(f"segment '{name}' does not exist{hint}")
        if row.status == SegmentStatus.REMOVED:
            raise ConfigError(f"segment '{name}' was removed (its definition file is gone)")
        out[name] = row.id
    return out


def _member_on(segment_id: int, as_of: date):
    """Memberships of a segment valid on ``as_of`` (the history's open-ended intervals)."""
    m = SegmentMembership
    return and_(m.segment_id == segment_id, m.valid_from <= as_of, or_(m.valid_to.is_(None), m.valid_to > as_of))


def _text(col, dialect: str):
    return cast(col, String) if dialect == "postgresql" else col


def _date_trigger(conn: Connection, campaign: Campaign, as_of: date) -> pd.DataFrame:
    trigger = campaign.trigger
    assert trigger is not None
    dialect = conn.dialect.name
    event = event_date(as_of, trigger)
    if trigger.field in TIMESTAMP_FIELDS:
        if trigger.field == "created":
            instant = Customer.created_at
            base = select(*PROFILE, instant.label("value"))
        else:
            first = (select(CustomerMetrics.customer_id, func.min(CustomerMetrics.first_purchase_at).label("value"))
                     .group_by(CustomerMetrics.customer_id).subquery())
            instant = first.c.value
            base = select(*PROFILE, instant.label("value")).join(first, first.c.customer_id == Customer.customer_id)
        # A local date is within a day of the UTC date: prefilter on the UTC date, decide in pandas.
        if trigger.recurrence == "once":
            start = datetime.combine(event - timedelta(days=1), datetime.min.time(), tzinfo=UTC)
            query = base.where(instant >= start, instant < start + timedelta(days=3))
        else:
            # A day either side: the local date may be the UTC date's neighbour.
            near = set().union(*(recurring_month_days(event + timedelta(days=k), trigger.feb29) for k in (-1, 0, 1)))
            md = (func.substr(instant, 6, 5) if dialect == "sqlite"
                  else func.to_char(func.timezone("UTC", instant), "MM-DD"))
            query = base.where(md.in_(sorted(near)))
        frame = pd.DataFrame(conn.execute(query).all(), columns=[*COLUMNS, "value"])
        if frame.empty:
            return _empty()
        stamps = pd.to_datetime(frame["value"], utc=True)
        local = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns]")
        for tz, idx in frame.groupby("timezone").groups.items():
            local.loc[idx] = stamps.loc[idx].dt.tz_convert(tz).dt.tz_localize(None).dt.normalize()
    else:
        if trigger.field == "birthday":
            value = _text(Customer.birthday, dialect)
        else:
            value = Customer.attributes[trigger.field.removeprefix("attributes.")].as_string()
        if trigger.recurrence == "once":
            condition = value == event.isoformat()
        else:
            condition = func.substr(value, 6, 5).in_(sorted(recurring_month_days(event, trigger.feb29)))
        frame = pd.DataFrame(conn.execute(select(*PROFILE, value.label("value")).where(condition)).all(),
                             columns=[*COLUMNS, "value"])
        if frame.empty:
            return _empty()
        # A malformed attribute (not YYYY-MM-DD) is no date: it triggers nothing.
        local = pd.to_datetime(frame["value"].astype(str).str[:10], format="%Y-%m-%d", errors="coerce")
    mask, years = match_dates(local, event, trigger)
    frame = frame[mask].copy()
    if trigger.recurrence == "yearly":
        frame["occurrence"] = str(event.year)
        frame["years"] = years[mask].astype("Int64")
    else:
        frame["occurrence"] = local[mask].dt.strftime("%Y-%m-%d")
        frame["years"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    return frame.drop(columns=["value"])


def _segment(conn: Connection, campaign: Campaign, as_of: date) -> pd.DataFrame:
    """Members on the day; one occurrence per stay, so a member is offered once until they leave."""
    ids = _segment_ids(conn, [campaign.audience.segment])
    m = SegmentMembership
    query = (select(*PROFILE, m.valid_from).join(m, m.customer_id == Customer.customer_id)
             .where(_member_on(ids[campaign.audience.segment], as_of)))
    return _by_entry(pd.DataFrame(conn.execute(query).all(), columns=[*COLUMNS, "valid_from"]))


def _by_entry(frame: pd.DataFrame) -> pd.DataFrame:
    """Occurrences named by the day the customer entered the segment."""
    frame["occurrence"] = pd.to_datetime(frame["valid_from"]).dt.strftime("%Y-%m-%d")
    frame["years"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    return frame.drop(columns=["valid_from"])


def _transition(conn: Connection, campaign: Campaign, as_of: date) -> pd.DataFrame:
    """Entries into to_segment over the last within_days that left from_segment the same day."""
    a = campaign.audience
    ids = _segment_ids(conn, [a.from_segment, a.to_segment])
    into, out = SegmentMembership.__table__.alias("into"), SegmentMembership.__table__.alias("out")
    first = as_of - timedelta(days=a.within_days - 1)
    query = (
        select(*PROFILE, into.c.valid_from)
        .join(into, into.c.customer_id == Customer.customer_id)
        .join(out, and_(out.c.customer_id == into.c.customer_id, out.c.segment_id == ids[a.from_segment],
                        out.c.valid_to == into.c.valid_from))
        .where(into.c.segment_id == ids[a.to_segment], into.c.valid_from >= first, into.c.valid_from <= as_of)
    )
    frame = pd.DataFrame(conn.execute(query).all(), columns=[*COLUMNS, "valid_from"])
    # One entry per customer: the latest, if they bounced in and out within the days.
    return _by_entry(frame.sort_values("valid_from").drop_duplicates("customer_id", keep="last"))


def _empty() -> pd.DataFrame:
    frame = pd.DataFrame(columns=[*COLUMNS, "occurrence"])
    frame["years"] = pd.array([], dtype="Int64")
    return frame


def select_audience(conn: Connection, campaign: Campaign, as_of: date) -> pd.DataFrame:
    """The customers the trigger selects for ``as_of``: profile columns, ``occurrence`` and ``years``.

    A date trigger restricted to a segment (``audience.segment``) keeps only its members on the day.
    """
    if campaign.kind == "date_trigger":
        frame = _date_trigger(conn, campaign, as_of)
        if campaign.audience.segment and not frame.empty:
            sid = _segment_ids(conn, [campaign.audience.segment])[campaign.audience.segment]
            members = {r[0] for r in conn.execute(
                select(SegmentMembership.customer_id).where(_member_on(sid, as_of)))}
            frame = frame[frame["customer_id"].isin(members)]
    elif campaign.kind == "segment":
        frame = _segment(conn, campaign, as_of)
    else:
        frame = _transition(conn, campaign, as_of)
    frame = frame.sort_values("customer_id", kind="stable").reset_index(drop=True)
    frame["email_consent"] = frame["email_consent"].astype(bool)
    return frame

