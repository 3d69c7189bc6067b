"""Reading segments and their history: the list with sizes and changes, members on a date,
and the moves between segments. What the CLI prints and, later, what the pages show."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date

from sqlalchemy import Connection, Date, Engine, String, bindparam, func, select, text

from crm_tasks.errors import CrmError
from crm_tasks.store.models import CustomerScore, Segment, SegmentMembership, SegmentSize, SegmentStatus


@dataclass
class SegmentInfo:
    name: str
    family: str
    description: str
    status: str
    size: int | None  # at the latest recompute
    previous: int | None  # at the one before
    entered: int | None
    exited: int | None
    source: str | None
    error: str | None

    @property
    def change(self) -> int | None:
        return None if self.size is None or self.previous is None else self.size - self.previous


@dataclass
class SegmentList:
    as_of: date | None  # the latest recompute
    previous_as_of: date | None
    segments: list[SegmentInfo]

    def to_dict(self) -> dict:
        return {"as_of": self.as_of, "previous_as_of": self.previous_as_of,
                "segments": [asdict(s) | {"change": s.change} for s in self.segments]}


def list_segments(engine: Engine) -> SegmentList:
    """Every segment with its size at the latest recompute and the change since the one before."""
    with engine.connect() as conn:
        dates = conn.execute(select(SegmentSize.as_of).distinct().order_by(SegmentSize.as_of.desc()).limit(2)
                             ).scalars().all()
        sizes = [
            {row.segment_id: row for row in conn.execute(select(SegmentSize).where(SegmentSize.as_of == d))}
            for d in dates
        ]
        out = []
        for seg in conn.execute(select(Segment).where(Segment.status != SegmentStatus.REMOVED)
                                .order_by(Segment.id)):
            now = sizes[0].get(seg.id) if sizes else None
            before = sizes[1].get(seg.id) if len(sizes) > 1 else None
            out.append(SegmentInfo(
                seg.name, seg.family, seg.description, seg.status, now.size if now else None,
                before.size if before else (0 if len(sizes) > 1 else None),
                now.entered if now else None, now.exited if now else None, seg.source, seg.error,
            ))
    return SegmentList(dates[0] if dates else None, dates[1] if len(dates) > 1 else None, out)


def _segment_id(conn: Connection, name: str) -> int:
    seg_id = conn.execute(select(Segment.id).where(Segment.name == name)).scalar_one_or_none()
    if seg_id is None:
        import difflib

        names = conn.execute(select(Segment.name)).scalars().all()
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise CrmError(f"no segment named '{name}'.{hint} `crm segments list` shows them all.")
    return seg_id


@dataclass
class SegmentMembers:
    name: str
    as_of: date | None  # None: the current membership
    size: int
    members: list[dict]  # customer id, member since, and scores: no contact data

    def to_dict(self) -> dict:
        return asdict(self)


def show_segment(engine: Engine, name: str, limit: int = 20, as_of: date | None = None) -> SegmentMembers:
    """A segment's members (ids and scores, no contact data), now or on an earlier date."""
    m, s = SegmentMembership, CustomerScore
    with engine.connect() as conn:
        seg_id = _segment_id(conn, name)
        when = m.valid_to.is_(None) if as_of is None else (
            (m.valid_from <= as_of) & (m.valid_to.is_(None) | (m.valid_to > as_of)))
        where = (m.segment_id == seg_id) & when
        size = conn.execute(select(func.count()).select_from(m).where(where)).scalar_one()
        rows = conn.execute(
            select(m.customer_id, m.valid_from.label("member_since"), s.lifecycle, s.rfm_segment, s.value_tier,
                   s.recency_days, s.frequency, s.monetary)
            .outerjoin(s, s.customer_id == m.customer_id).where(where)
            .order_by(s.monetary.desc().nulls_last(), m.customer_id).limit(limit)
        ).mappings().all()
    return SegmentMembers(name, as_of, size, [dict(r) for r in rows])


@dataclass
class Transition:
    from_segment: str | None  # None: entered without leaving another of its family
    to_segment: str
    customers: int


@dataclass
class TransitionList:
    since: date
    until: date | None
    pairs: list[Transition]
    customers: list[dict]  # with --from/--to: who moved, and when

    def to_dict(self) -> dict:
        return asdict(self)


# Each entry since a date, paired with the exit on the same day from another segment of
# the same family (RFM, lifecycle and value tiers are exclusive within a family, so there
# is at most one). The pairing seeks ix_segment_memberships_closed per entry.
_TRANSITIONS = """
SELECT (SELECT f.name FROM segments f JOIN segment_memberships x ON x.segment_id = f.id
        WHERE f.family = t.family AND f.family <> 'custom' AND f.id <> t.id
          AND x.valid_to = e.valid_from AND x.customer_id = e.customer_id) AS from_segment,
       t.name AS to_segment, e.customer_id, e.valid_from AS moved_on
FROM segment_memberships e JOIN segments t ON t.id = e.segment_id
WHERE e.valid_from >= :since AND e.valid_from <= :until
"""


def transitions(engine: Engine, since: date, until: date | None = None, from_segment: str | None = None,
                to_segment: str | None = None, limit: int = 100) -> TransitionList:
    """Who moved from which segment to which since a date: counts per pair, and with a
    from or to segment named, the customers (ids only)."""
    params = {"since": since, "until": until or date(9999, 12, 31)}
    binds = [bindparam("since", type_=Date), bindparam("until", type_=Date)]
    with engine.connect() as conn:
        for name in (from_segment, to_segment):
            if name:
                _segment_id(conn, name)
        base = f"({_TRANSITIONS}) moves"
        pairs = [Transition(f, t, n) for f, t, n in conn.execute(text(
            f"SELECT from_segment, to_segment, COUNT(*) FROM {base} GROUP BY from_segment, to_segment "
            "ORDER BY COUNT(*) DESC, to_segment"
        ).bindparams(*binds), params)]
        who: list[dict] = []
        if from_segment or to_segment:
            conditions, extra = [], {}
            if from_segment:
                conditions.append("from_segment = :from_segment")
                extra["from_segment"] = from_segment
            if to_segment:
                conditions.append("to_segment = :to_segment")
                extra["to_segment"] = to_segment
            rows = conn.execute(text(
                f"SELECT from_segment, to_segment, customer_id, moved_on FROM {base} "
                f"WHERE {' AND '.join(conditions)} ORDER BY moved_on, customer_id LIMIT :limit"
            ).bindparams(*binds).columns(from_segment=String, to_segment=String, customer_id=String,
                                         moved_on=Date), params | extra | {"limit": limit})
            who = [dict(r._mapping) for r in rows]
    if from_segment or to_segment:
        pairs = [p for p in pairs if (not from_segment or p.from_segment == from_segment)
                 and (not to_segment or p.to_segment == to_segment)]
    return TransitionList(since, until, pairs, who)
