"""Stored report figures: what the night stores equals a live count, the pages and the CLI read it back while
the data is unchanged, and any change of the data sends them back to a live count — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import func, insert, select, text, update

from crm_tasks.analytics.figures import KINDS, Figures, data_state, opening_reports, store_figures
from crm_tasks.analytics.sales import refresh_sales, sales_report
from crm_tasks.pages import data
from crm_tasks.segments.compute import recompute
from crm_tasks.store.models import CleanupRun, ClvFit, ReportFigure
from tests.analytics.test_sales import _buy
from tests.pages import scenario
from tests.pages.scenario import AS_OF


def test_the_stored_reports_equal_a_live_count_and_are_read_back(engine, cfg):
    scenario.everything(engine, cfg)
    result = store_figures(engine, cfg, AS_OF)
    assert result.reports == len(opening_reports(AS_OF)) == 13
    figures = Figures(engine, cfg)
    for name, params in opening_reports(AS_OF):
        assert figures.report(name, **params) == KINDS[name].compute(engine, cfg, **params), (name, params)
    assert not figures.live and figures.stored_at is not None
    # The reports hold real figures, not empty ones: the scenario's March buyers (its ten customers, and every
    # third of the campaign's 260) and its ten scored buyers.
    march = figures.sales("month", date(2026, 2, 1), AS_OF)[-1]
    assert march.period == "2026-03-01" and march.buyers == 10 + len(range(0, scenario.KIDS, 3))
    assert len(figures.clv().rows) == 10


def test_the_pages_read_the_stored_reports_instead_of_recounting(engine, cfg):
    scenario.everything(engine, cfg)
    store_figures(engine, cfg, AS_OF)
    assert data.overview(engine, cfg, AS_OF).live is False
    # A stored figure changed behind the page's back is what the page shows: it did not recount.
    with engine.begin() as conn:
        body = conn.execute(select(ReportFigure.body).where(ReportFigure.name == "kpis", ReportFigure.params.like(
            '%"months":1}'))).scalar_one()
        body["value"][-1]["new_customers"] = 424242
        conn.execute(update(ReportFigure).where(ReportFigure.name == "kpis", ReportFigure.params.like(
            '%"months":1}')).values(body=body))
    page = data.overview(engine, cfg, AS_OF)
    assert page.kpis.new_customers == 424242 and page.stored_at is not None and not page.live


def test_any_change_of_the_data_sends_the_reports_back_to_a_live_count(engine, cfg):
    scenario.everything(engine, cfg)
    store_figures(engine, cfg, AS_OF)
    states = set()

    def state() -> str:
        with engine.connect() as conn:
            return data_state(conn, cfg)

    states.add(state())
    # A late purchase, once the cube has it.
    _buy(engine, [("C1", datetime(2026, 3, 18, 9, tzinfo=UTC), "999", "INR", "S0", "toys", 1)])
    refresh_sales(engine, cfg, AS_OF)
    states.add(state())
    figures = Figures(engine, cfg)
    march = figures.sales("month", date(2026, 2, 1), AS_OF)[-1]
    assert figures.live and march == sales_report(engine, cfg, "month", date(2026, 2, 1), AS_OF)[-1]
    recompute(engine, cfg, AS_OF)  # a segment recompute re-run
    states.add(state())
    with engine.begin() as conn:
        conn.execute(insert(ClvFit).values(as_of=AS_OF + timedelta(days=1), status="not_enough_data", params={},
                                           customers=0, repeat_customers=0, detail=None, seconds=0.1))
    states.add(state())
    with engine.begin() as conn:
        conn.execute(insert(CleanupRun).values(
            as_of=AS_OF, ran_at=datetime(2026, 3, 21, tzinfo=UTC), profiles_before=10, kept=10, archived=0,
            merged=0, restored=0, purged=0, reasons={}, archived_total=0, restored_total=0, purged_total=0,
            in_grace=0, active_share=1.0, at_risk_share=0.0, archived_share=0.0, parameters={}))
    states.add(state())
    rates = cfg.segments.exchange_rates | {"PKR": cfg.segments.exchange_rates["PKR"] * 2}
    moved = cfg.model_copy(update={"segments": cfg.segments.model_copy(update={"exchange_rates": rates})})
    with engine.connect() as conn:
        states.add(data_state(conn, moved))
    assert len(states) == 6

    # Stored again: only the reports of the data as it is now remain.
    store_figures(engine, cfg, AS_OF)
    with engine.connect() as conn:
        assert set(conn.execute(select(ReportFigure.state)).scalars()) == {state()}
        assert conn.execute(select(func.count()).select_from(ReportFigure)).scalar_one() == 13


def test_a_filtered_sales_page_counts_its_buyers_only_when_asked(engine, cfg):
    scenario.everything(engine, cfg)
    quick = data.sales_page(engine, cfg, AS_OF, "week", category="grocery")
    counted = data.sales_page(engine, cfg, AS_OF, "week", category="grocery", count_buyers=True)
    assert not quick.buyers and counted.buyers
    assert counted.rows == sales_report(engine, cfg, "week", quick.start, AS_OF, category="grocery")
    assert [r.buyers for r in quick.rows] == [None] * len(quick.rows) and any(r.buyers for r in counted.rows)
    # Everything but the buyers is the same cube read.
    strip = ("buyers", "new_buyers", "returning_buyers")
    assert [{k: v for k, v in vars(r).items() if k not in strip} for r in quick.rows] == \
        [{k: v for k, v in vars(r).items() if k not in strip} for r in counted.rows]


def test_the_overviews_failed_runs_read_the_partial_index_of_messages_in_trouble(engine, cfg):
    run_id = scenario.measured_campaign(engine, cfg)
    assert [r["run_id"] for r in data.failed_runs(engine)] == [run_id]
    assert data.failed_runs(engine)[0]["failed_messages"] == 2
    stmt = str(data.failed_runs_query(10).compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {stmt}"))
        else:
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            plan = " ".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {stmt}"))
    assert "ix_messages_trouble" in plan, plan


def test_the_cli_reads_the_same_stored_report_as_the_page(use_settings, engine):
    from click.testing import CliRunner

    from crm_tasks.cli import main

    cfg = use_settings
    scenario.everything(engine, cfg)
    store_figures(engine, cfg, AS_OF)
    with engine.begin() as conn:
        key = f'{{"as_of":"{AS_OF.isoformat()}","months":12}}'
        body = conn.execute(select(ReportFigure.body).where(ReportFigure.name == "cohorts",
                                                            ReportFigure.params == key)).scalar_one()
        body["value"][-1]["customers"] = 31337
        conn.execute(update(ReportFigure).where(ReportFigure.name == "cohorts", ReportFigure.params == key)
                     .values(body=body))
    out = CliRunner().invoke(main, ["report", "cohorts", "--as-of", AS_OF.isoformat(), "--json"])
    assert out.exit_code == 0, out.output
    cohorts = json.loads(out.output)["cohorts"]
    assert cohorts[-1]["customers"] == 31337 == data.sales_page(engine, cfg, AS_OF, "day").cohorts[-1].customers
