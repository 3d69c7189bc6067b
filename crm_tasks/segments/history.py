"""Reading segments and their history: the list with sizes and changes, members on a date,
and the moves between segments. What the CLI prints and, later, what the pages show."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.orm import aliased

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


def _moves(since: date, until: date):
    """Each entry between two dates, paired with the exit on the same day from another segment of
    the same family (RFM, lifecycle and value tiers are exclusive within a family, so there is at
    most one): from_segment (None for a first entry), to_segment, customer_id, moved_on. The pairing
    seeks ix_segment_memberships_closed per entry."""
    entry, to = aliased(SegmentMembership, name="e"), aliased(Segment, name="t")
    exit_, left = aliased(SegmentMembership, name="x"), aliased(Segment, name="f")
    from_segment = (select(left.name).join(exit_, exit_.segment_id == left.id)
                    .where(left.family == to.family, left.family != "custom", left.id != to.id,
                           exit_.valid_to == entry.valid_from, exit_.customer_id == entry.customer_id)
                    .scalar_subquery())
    return (select(from_segment.label("from_segment"), to.name.label("to_segment"), entry.customer_id,
                   entry.valid_from.label("moved_on"))
            .join_from(entry, to, to.id == entry.segment_id)
            .where(entry.valid_from >= since, entry.valid_from <= until)
            .subquery("moves"))


def transitions(engine: Engine, since: date, until: date | None = None, from_segment: str | None = None,
                to_segment: str | None = None, limit: int = 100) -> TransitionList:
    """Who moved from which segment to which since a date: counts per pair, and with a
    from or to segment named, the customers (ids only)."""
    moves = _moves(since, until or date(9999, 12, 31))
    with engine.connect() as conn:
        for name in (from_segment, to_segment):
            if name:
                _segment_id(conn, name)
        n = func.count()
        pairs = [Transition(f, t, k) for f, t, k in conn.execute(
            select(moves.c.from_segment, moves.c.to_segment, n).group_by(moves.c.from_segment, moves.c.to_segment)
            .order_by(n.desc(), moves.c.to_segment))]
        who: list[dict] = []
        if from_segment or to_segment:
            named = [c == v for c, v in ((moves.c.from_segment, from_segment), (moves.c.to_segment, to_segment)) if v]
            rows = conn.execute(select(moves).where(*named).order_by(moves.c.moved_on, moves.c.customer_id)
                                .limit(limit))
            who = [dict(r._mapping) for r in rows]
    if from_segment or to_segment:
        pairs = [p for p in pairs if (not from_segment or p.from_segment == from_segment)
                 and (not to_segment or p.to_segment == to_segment)]
    return TransitionList(since, until, pairs, who)
