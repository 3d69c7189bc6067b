"""Success measures: ``crm report refresh|campaign|lift|control``."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import click

from crm_tasks.cli.common import emit, json_output, parse_date, reported, settings, store
from crm_tasks.cli.common import store as store_engine


@click.group("report")
def report_group() -> None:
    """Did a campaign work? Attributed revenue, holdout lift with intervals, A/B variants, the control group."""


@report_group.command("refresh")
@click.option("--as-of", "as_of", callback=parse_date, required=True,
              help="Purchases up to the end of this day count (YYYY-MM-DD).")
@json_output
def report_refresh(as_of, as_json) -> None:
    """Recompute attributions, campaign results and the control group as of a date (what crm_reports runs).

    Example: crm report refresh --as-of 2026-03-31
    """
    from crm_tasks.results.campaigns import refresh_results

    db = store(as_json)
    with reported(as_json):
        result = refresh_results(db, settings(), as_of)
    emit(as_json, result.summary(), f"results as of {as_of}: {result.runs} runs, {result.groups} groups, "
                                    f"{result.attributed} purchases attributed, {result.control_months} control "
                                    f"months ({result.seconds:.1f} s)")


@report_group.command("campaign")
@click.argument("name")
@click.option("--run", "run_id", type=int, help="Only this run (its id, from `crm campaign status`).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the table as CSV (cells never start a spreadsheet formula).")
@json_output
def report_campaign(name, run_id, csv_path, as_json) -> None:
    """A campaign's results per run and variant: conversion, revenue, attributed revenue, coupons, clicks,
    and the lift against the holdout with its 95% interval and verdict.

    Example: crm report campaign at_risk_offer --json
    """
    from crm_tasks.results.reports import campaign_csv, campaign_lines, campaign_report

    db = store(as_json)
    with reported(as_json):
        report = campaign_report(db, name, run_id)
    if csv_path is not None:
        csv_path.write_text(campaign_csv(report), encoding="utf-8")
    emit(as_json, report.to_dict(), "\n".join(campaign_lines(report)))


@report_group.command("lift")
@click.option("--since", callback=parse_date, help="Runs on or after this day (YYYY-MM-DD).")
@json_output
def report_lift(since, as_json) -> None:
    """Every measured run's verdict and lift, one line each.

    Example: crm report lift --since 2026-01-01
    """
    from crm_tasks.results.reports import lift_summary

    rows = lift_summary(store(as_json), since)
    lines = [f"{r['run_as_of']} {r['campaign']}{':' + r['variant'] if r['variant'] else ''} (run {r['run_id']}, "
             f"{r['customers']} customers, attributed {r['attributed_revenue']}): {(r['lift'] or {}).get('text')}"
             for r in rows] or ["no measured runs yet (crm report refresh --as-of DATE)"]
    emit(as_json, {"runs": rows}, "\n".join(lines))


@report_group.command("control")
@json_output
def report_control(as_json) -> None:
    """The programme's total lift: marketed customers against the global control group, per month.

    Example: crm report control --json
    """
    from crm_tasks.results.reports import control_report

    months = control_report(store(as_json))
    lines = []
    for m in months:
        lift = m.get("lift") or {}
        marketed, control = ((m.get(g) or {}).get("per_customer") for g in ("marketed", "control"))
        lines.append(f"{m['month'][:7]}{'' if m['complete'] else ' (so far)'}: revenue/customer marketed "
                     f"{marketed} vs control {control}: {lift.get('text', 'n/a')}")
    emit(as_json, {"months": months}, "\n".join(lines) or "no control-group results (results.global_control_share "
                                                          "is 0, or no refresh yet)")


@report_group.command("sales")
@click.option("--by", type=click.Choice(["day", "week", "month"]), default="day", show_default=True)
@click.option("--from", "start", callback=parse_date, help="First day (YYYY-MM-DD).")
@click.option("--to", "end", callback=parse_date, help="Last day, inclusive.")
@click.option("--category", help="Only this category.")
@click.option("--store", help="Only this store.")
@click.option("--segment", help="Only buyers in this RFM or lifecycle segment when the day began "
                                "(rfm:champions, lifecycle:at_risk, rfm:(none)).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the rows as CSV (cells never start a spreadsheet formula).")
@click.option("--refresh", "refresh_as_of", callback=parse_date,
              help="First bring the sales cube up to the end of this day (what crm_reports runs).")
@json_output
def report_sales(by, start, end, category, store, segment, csv_path, refresh_as_of, as_json) -> None:
    """Revenue (net, exact, in the base currency), refunds, orders, items and buyers (new and returning) per
    day, week or month, from the daily sales cube.

    Examples: crm report sales --by month --from 2026-01-01 --category grocery
              crm report sales --by week --segment rfm:at_risk --json
    """
    from crm_tasks.analytics.figures import Figures
    from crm_tasks.analytics.sales import refresh_sales, sales_report
    from crm_tasks.results.reports import safe_cell

    db = store_engine(as_json)  # `store` is the option here
    with reported(as_json):
        if refresh_as_of is not None:
            refresh_sales(db, settings(), refresh_as_of)
        if category or store or segment:
            found = sales_report(db, settings(), by, start, end, category=category, store=store, segment=segment)
        else:  # the night's stored report when it is current, as the sales page reads it
            found = Figures(db, settings()).sales(by, start, end)
        rows = [r.to_dict() for r in found]
    if csv_path is not None:
        out = io.StringIO()
        writer = csv.writer(out)
        columns = list(rows[0]) if rows else ["period"]
        writer.writerow(columns)
        writer.writerows([[safe_cell(r[c]) for c in columns] for r in rows])
        csv_path.write_text(out.getvalue(), encoding="utf-8")
    lines = [f"{r['period']}  revenue {r['revenue']:>14}  orders {r['orders']:>7}  buyers {r['buyers']:>6} "
             f"(new {r['new_buyers']}, returning {r['returning_buyers']})  refunded {r['refunded']}" for r in rows]
    emit(as_json, {"by": by, "rows": rows}, "\n".join(lines) or "no sales in the cube for that range "
                                                              "(crm report sales --refresh DATE builds it)")


@report_group.command("kpis")
@click.option("--as-of", "as_of", callback=parse_date, required=True, help="The last day counted (YYYY-MM-DD).")
@click.option("--months", default=12, show_default=True, type=click.IntRange(1, 60))
@json_output
def report_kpis(as_of, months, as_json) -> None:
    """Lifecycle KPIs per month: customers per stage, new (acquisition), churned, reactivated, the 12-month
    churn rate, expansion (a category new to the customer) and the average basket.

    Example: crm report kpis --as-of 2026-03-31 --months 6
    """
    from crm_tasks.analytics.figures import Figures

    with reported(as_json):
        rows = [k.to_dict() for k in Figures(store_engine(as_json), settings()).kpis(as_of, months)]
    stages = ("new", "active", "at_risk", "churned", "reactivated")
    lines = ["month    " + " ".join(f"{s:>11}" for s in stages) + "   acquired  churn/12m  expansion  basket"]
    for r in rows:
        rate = r["churn_rate_12m"]
        lines.append(f"{r['month'][:7]}{'' if r['complete'] else '*'} "
                     + " ".join(f"{'-' if r['stages'][s] is None else r['stages'][s]:>11}" for s in stages)
                     + f"   {r['new_customers']:>8}  {'n/a' if rate is None else f'{rate:.1%}':>9}"
                     f"  {r['expansion']:>9}  {r['avg_basket'] or '-'}")
    emit(as_json, {"months": rows}, "\n".join(lines))


@report_group.command("cohorts")
@click.option("--as-of", "as_of", callback=parse_date, required=True, help="The last day counted (YYYY-MM-DD).")
@click.option("--months", default=12, show_default=True, type=click.IntRange(1, 36))
@json_output
def report_cohorts(as_of, months, as_json) -> None:
    """Retention by monthly acquisition cohort: of the customers whose first order was in a month, the share
    who ordered in each later month.

    Example: crm report cohorts --as-of 2026-03-31 --months 6
    """
    from crm_tasks.analytics.figures import Figures

    with reported(as_json):
        rows = [c.to_dict() for c in Figures(store_engine(as_json), settings()).cohorts(as_of, months)]
    lines = ["cohort   customers  " + " ".join(f"{'m' + str(i):>6}" for i in range(months))]
    lines += [f"{r['month'][:7]}  {r['customers']:>9}  " + " ".join(f"{x:>6.0%}" for x in r["retention"])
              for r in rows]
    emit(as_json, {"cohorts": rows}, "\n".join(lines))


@report_group.command("figures")
@click.option("--as-of", "as_of", callback=parse_date, required=True,
              help="The day the pages open on (YYYY-MM-DD); what crm_reports stores after the cube and the fits.")
@json_output
def report_figures(as_of, as_json) -> None:
    """Store the reports the CRM pages open with (KPIs, cohorts, sales by day, week and month and their breakdowns, CLV), so that
    the pages read them instead of recounting purchases; used while the data behind them is unchanged.

    Example: crm report figures --as-of 2026-03-31
    """
    from crm_tasks.analytics.figures import store_figures

    db = store_engine(as_json)
    with reported(as_json):
        result = store_figures(db, settings(), as_of)
    emit(as_json, result.summary(), f"figures as of {as_of}: {result.reports} reports stored "
                                    f"({result.seconds:.1f} s)" if result.reports else
                                    f"figures as of {as_of}: not stored, the data changed while they were computed")

from crm_tasks.cli.forecast import report_forecast

report_group.add_command(report_forecast)

from crm_tasks.cli.clv import report_clv

report_group.add_command(report_clv)
