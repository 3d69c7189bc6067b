"""Reading the results back: the objects ``crm report ...``, the demo and (later) the CRM pages print.

Every figure comes from ``campaign_results`` and ``control_results`` as the last refresh stored them
(``crm report refresh`` or the ``crm_reports`` DAG), so a page, a command and a test cannot disagree.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import Engine, func, select

from crm_tasks.errors import ConfigError
from crm_tasks.store.models import CampaignResult, ControlResult

# A spreadsheet reads a cell starting with one of these as a formula (CSV injection, OWASP).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _money(x: Decimal) -> str:
    return f"{x:.2f}"


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _group(row) -> dict:
    return {
        "variant": row.variant or None,
        "customers": row.customers,
        "messages_sent": row.messages_sent,
        "conversion": {"converters": row.converters, "rate": _rate(row.converters, row.customers)},
        "revenue": {"total": _money(row.revenue), "orders": row.orders,
                    "per_customer": _money(row.revenue / row.customers) if row.customers else None},
        "attributed": {"orders": row.attributed_orders, "revenue": _money(row.attributed_revenue)},
        "coupons_redeemed": row.coupons_redeemed,
        "clicks": {"clickers": row.clickers, "rate": _rate(row.clickers, row.messages_sent)},
        "bounces": row.bounces,
    }


@dataclass
class CampaignReport:
    campaign: str
    as_of: date | None
    runs: list[dict]

    def to_dict(self) -> dict:
        return {"campaign": self.campaign, "as_of": self.as_of.isoformat() if self.as_of else None, "runs": self.runs}


def campaign_report(engine: Engine, campaign: str, run_id: int | None = None) -> CampaignReport:
    """Each measured run of ``campaign`` (newest first), or only ``run_id``: per variant the treatment's
    conversion, revenue, attributed revenue, coupons, clicks and bounces, its ``lift`` against the
    ``holdout``, and the holdout's own figures."""
    stmt = select(CampaignResult).where(CampaignResult.campaign == campaign)
    if run_id is not None:
        stmt = stmt.where(CampaignResult.run_id == run_id)
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(CampaignResult.run_id.desc(), CampaignResult.grp.desc(),
                                          CampaignResult.variant)).all()
    if not rows:
        what = f"run {run_id} of campaign {campaign!r}" if run_id is not None else f"campaign {campaign!r}"
        latest = latest_as_of(engine)
        when = f"as of {latest}" if latest else "yet (no refresh has run)"
        raise ConfigError(f"no results for {what} {when}: results cover runs that planned for real (not dry or test "
                          "runs) scheduled before the as-of date; they are computed by the crm_reports DAG or "
                          "`crm report refresh --as-of DATE`")
    runs: dict[int, dict] = {}
    for row in rows:
        run = runs.setdefault(row.run_id, {
            "run_id": row.run_id, "run_as_of": row.run_as_of.isoformat(),
            "window": {"start": row.window_start.isoformat(), "end": row.window_end.isoformat(),
                       "complete": row.window_complete},
            "treatment": [], "holdout": None,
        })
        if row.grp == "holdout":
            run["holdout"] = _group(row)
        else:
            run["treatment"].append(_group(row) | {"lift": row.lift})
    return CampaignReport(campaign, rows[0].as_of, list(runs.values()))


def campaign_lines(report: CampaignReport) -> list[str]:
    """The report as text, one block per run."""
    lines = [f"campaign {report.campaign}, results as of {report.as_of}"]
    for run in report.runs:
        w = run["window"]
        lines.append(f"  run {run['run_id']} ({run['run_as_of']}), window {w['start'][:10]} to {w['end'][:10]} "
                     f"({'closed' if w['complete'] else 'still open'})")
        for t in run["treatment"]:
            name = f"variant {t['variant']}" if t["variant"] else "treatment"
            lines.append(_group_line(name, t))
            lift = t["lift"] or {}
            if "win_probability" in lift:
                lines.append(f"      P(best) {lift['win_probability']:.1%}")
            lines.append(f"      lift: {lift.get('text', 'n/a')}")
            for label, key in (("conversion", "conversion"), ("revenue/customer", "revenue")):
                diff = (lift.get(key) or {}).get("difference")
                if diff:
                    lines.append(f"      {label} difference {diff['estimate']:+.4g} "
                                 f"[{_num(diff['ci_low'])}, {_num(diff['ci_high'])}]")
            inc = lift.get("incremental_revenue")
            if inc:
                lines.append(f"      incremental revenue {inc['estimate']:+,.2f} "
                             f"[{_num(inc['ci_low'])}, {_num(inc['ci_high'])}]")
        if run["holdout"]:
            lines.append(_group_line("holdout", run["holdout"]))
    return lines


def _num(x) -> str:
    return "n/a" if x is None else f"{x:+,.4g}"


def _group_line(name: str, g: dict) -> str:
    rate = g["conversion"]["rate"]
    return (f"    {name}: {g['customers']} customers, {g['messages_sent']} sent, "
            f"{g['conversion']['converters']} bought ({'n/a' if rate is None else f'{rate:.1%}'}), "
            f"revenue {g['revenue']['total']}, attributed {g['attributed']['revenue']} "
            f"({g['attributed']['orders']} orders), {g['coupons_redeemed']} coupons, {g['clicks']['clickers']} clicked")


def lift_summary(engine: Engine, since: date | None = None) -> list[dict]:
    """Every measured run since ``since`` (its occurrence day), one line per treatment group: the verdict,
    the conversion and revenue differences with their intervals, and the incremental revenue."""
    stmt = select(CampaignResult).where(CampaignResult.grp == "treatment")
    if since is not None:
        stmt = stmt.where(CampaignResult.run_as_of >= since)
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(CampaignResult.run_as_of, CampaignResult.campaign,
                                          CampaignResult.run_id, CampaignResult.variant)).all()
    return [{"campaign": r.campaign, "run_id": r.run_id, "run_as_of": r.run_as_of.isoformat(),
             "variant": r.variant or None, "customers": r.customers, "window_complete": r.window_complete,
             "attributed_revenue": _money(r.attributed_revenue), "lift": r.lift} for r in rows]


def control_report(engine: Engine) -> list[dict]:
    """The global control group against the marketed customers, month by month (oldest first)."""
    with engine.connect() as conn:
        rows = conn.execute(select(ControlResult).order_by(ControlResult.month, ControlResult.grp)).all()
    months: dict[date, dict] = {}
    for r in rows:
        m = months.setdefault(r.month, {"month": r.month.isoformat(), "complete": r.month_complete})
        m[r.grp] = {"customers": r.customers, "buyers": r.buyers, "revenue": _money(r.revenue),
                    "per_customer": _money(r.revenue / r.customers) if r.customers else None}
        if r.lift is not None:
            m["lift"] = r.lift
    return list(months.values())


def latest_as_of(engine: Engine) -> date | None:
    with engine.connect() as conn:
        return conn.execute(select(func.max(CampaignResult.as_of))).scalar()


def safe_cell(value) -> str:
    """A CSV cell a spreadsheet shows as text: a leading formula character is quoted away with an apostrophe."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def campaign_csv(report: CampaignReport) -> str:
    """One row per run and group, for a spreadsheet; no cell can start a formula."""
    out = io.StringIO()
    writer = csv.writer(out)
    header = ["campaign", "run_id", "run_as_of", "window_complete", "group", "variant", "customers",
              "messages_sent", "converters", "conversion_rate", "revenue", "revenue_per_customer",
              "attributed_orders", "attributed_revenue", "coupons_redeemed", "clickers", "bounces", "verdict",
              "conversion_diff", "conversion_ci_low", "conversion_ci_high", "revenue_diff", "revenue_ci_low",
              "revenue_ci_high", "incremental_revenue", "win_probability"]
    writer.writerow(header)
    for run in report.runs:
        groups = [("treatment", t) for t in run["treatment"]] + ([("holdout", run["holdout"])] if run["holdout"] else [])
        for grp, g in groups:
            lift = g.get("lift") or {}
            conv = (lift.get("conversion") or {}).get("difference") or {}
            rev = (lift.get("revenue") or {}).get("difference") or {}
            writer.writerow([safe_cell(v) for v in (
                report.campaign, run["run_id"], run["run_as_of"], run["window"]["complete"], grp, g["variant"],
                g["customers"], g["messages_sent"], g["conversion"]["converters"], g["conversion"]["rate"],
                g["revenue"]["total"], g["revenue"]["per_customer"], g["attributed"]["orders"],
                g["attributed"]["revenue"], g["coupons_redeemed"], g["clicks"]["clickers"], g["bounces"],
                lift.get("verdict"), conv.get("estimate"), conv.get("ci_low"), conv.get("ci_high"),
                rev.get("estimate"), rev.get("ci_low"), rev.get("ci_high"),
                (lift.get("incremental_revenue") or {}).get("estimate"), lift.get("win_probability"))])
    return out.getvalue()
