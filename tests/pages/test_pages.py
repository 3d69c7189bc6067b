"""Each page's numbers against the library's result objects, the CLI's --json and independent queries, on
data the nightly stages produced (tests/pages/scenario.py, built once per dialect: these tests only read it);
and every page honest on an empty database."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from crm_tasks.analytics.clv import clv_distribution, clv_report
from crm_tasks.analytics.kpis import cohort_matrix, lifecycle_kpis
from crm_tasks.analytics.sales import sales_report
from crm_tasks.cli import main
from crm_tasks.pages.data import QUARANTINE_PAGE_SIZE
from crm_tasks.results.reports import campaign_report
from crm_tasks.segments.history import list_segments, transitions
from crm_tasks.settings import settings
from crm_tasks.store.models import (
    CampaignPlanRow,
    CustomerClv,
    CustomerScore,
    IngestBatch,
    Message,
    Purchase,
    QuarantinedRow,
    RevenueForecast,
    SalesDaily,
    SalesDailySegment,
    Segment,
    SegmentMembership,
    SegmentSize,
)
from tests.pages import scenario
from tests.pages.conftest import Values, number

SVG = "{http://www.w3.org/2000/svg}"
AS_OF = scenario.AS_OF


def _revenue(engine, cfg, first, last) -> Decimal:
    """Net revenue of the local days first..last, summed from the purchases themselves (all in INR)."""
    zone = ZoneInfo(cfg.timezone)
    lo = datetime.combine(first, datetime.min.time(), tzinfo=zone).astimezone(UTC)
    hi = datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=zone).astimezone(UTC)
    with engine.connect() as conn:
        return conn.execute(select(func.coalesce(func.sum(Purchase.amount), 0)).where(
            Purchase.purchased_at >= lo, Purchase.purchased_at < hi)).scalar_one()


def _cli(*args) -> dict:
    out = CliRunner().invoke(main, [*args, "--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def test_the_overview_shows_the_stages_revenue_forecast_ingest_and_failed_runs(crm, crm_client, crm_cli):
    engine, cfg, run_id, client = crm.engine, crm.cfg, crm.run_id, crm_client
    page = Values(client.get("/overview").text)

    # Stages: the KPIs' object, the CLI's --json and the customers' scores all agree with the page.
    kpis = lifecycle_kpis(engine, cfg, AS_OF, months=1)[-1]
    cli = _cli("report", "kpis", "--as-of", AS_OF.isoformat(), "--months", "1")["months"][-1]
    with engine.connect() as conn:
        scored = Counter(conn.execute(select(CustomerScore.lifecycle)).scalars())
    for stage, n in kpis.stages.items():
        assert number(page.get(f"stage:{stage}")) == n == cli["stages"][stage] == scored.get(stage, 0)
    assert sum(kpis.stages.values()) > 0
    # Change since the latest recompute a week or more before: that day's stored sizes.
    with engine.connect() as conn:
        week_ago = conn.execute(select(func.max(SegmentSize.as_of)).where(
            SegmentSize.as_of <= AS_OF - timedelta(days=7))).scalar_one()
        then = dict(conn.execute(select(Segment.name, SegmentSize.size).join(Segment, Segment.id == SegmentSize.segment_id)
                                 .where(SegmentSize.as_of == week_ago, Segment.family == "lifecycle")).all())
    assert week_ago is not None
    for stage, n in kpis.stages.items():
        assert int(page.get(f"change:{stage}")) == n - then[f"lifecycle:{stage}"]
    # Less than a year of segment history: no rate, said so.
    assert kpis.churn_rate_12m is None and page.get("churn_rate_12m") == "not enough data"

    # Revenue: month to date against the same days of February, from the purchases themselves.
    this_month = _revenue(engine, cfg, AS_OF.replace(day=1), AS_OF)
    feb_to_date = _revenue(engine, cfg, AS_OF.replace(month=2, day=1), AS_OF.replace(month=2))
    assert Decimal(str(number(page.get("revenue_this_month")))) == this_month
    assert Decimal(str(number(page.get("revenue_last_month_to_date")))) == feb_to_date
    assert number(page.get("revenue_change")) == pytest.approx(float(this_month / feb_to_date - 1) * 100, abs=0.05)
    # The projection adds the stored forecast's means of the days left in March.
    with engine.connect() as conn:
        rest = conn.execute(select(func.sum(RevenueForecast.mean)).where(
            RevenueForecast.day > AS_OF, RevenueForecast.day <= AS_OF.replace(day=31))).scalar_one()
    assert number(page.get("projected_month")) == pytest.approx(float(this_month) + rest)

    # Last night's ingest: its quarantined lines, from the batches table.
    with engine.connect() as conn:
        quarantined = conn.execute(select(func.sum(IngestBatch.rows_quarantined)).where(
            IngestBatch.partition_date == AS_OF, IngestBatch.status != "replaced")).scalar_one()
    assert number(page.get("quarantined")) == quarantined == scenario.BAD_LINES
    assert page.get("reconciles") == "reconciles"

    # The run with messages that failed for good.
    with engine.connect() as conn:
        failed = conn.execute(select(func.count()).where(Message.run_id == run_id,
                                                         Message.state == "failed")).scalar_one()
    assert failed > 0 and number(page.get(f"data-run={run_id}", "failed_messages")) == failed


def test_the_sales_page_charts_and_tabulates_the_report(crm, crm_client, crm_cli):
    engine, cfg, client = crm.engine, crm.cfg, crm_client
    html = client.get("/sales").text
    page = Values(html)
    start = AS_OF - timedelta(days=89)
    rows = sales_report(engine, cfg, "day", start, AS_OF)
    cli = {r["period"]: r for r in _cli("report", "sales", "--by", "day", "--from", start.isoformat(),
                                        "--to", AS_OF.isoformat())["rows"]}
    assert rows and len(cli) == len(rows)
    for r in rows:
        shown = page.get(f"data-period={r.period}", "revenue")
        assert Decimal(shown.replace(",", "")) == r.revenue == Decimal(cli[r.period]["revenue"])
        assert number(page.get(f"data-period={r.period}", "orders")) == r.orders == cli[r.period]["orders"]
    assert sum(r.revenue for r in rows) == _revenue(engine, cfg, start, AS_OF)

    # The revenue chart: an image with a title, both axes named, the legend, the forecast band.
    svgs = [ET.fromstring(s) for s in re.findall(r"<svg.*?</svg>", html, flags=re.DOTALL)]
    revenue_chart, orders_chart = svgs
    assert revenue_chart.get("role") == "img" and revenue_chart.find(f"{SVG}title").text == "Net revenue by day"
    texts = [(t.get("class"), t.text) for t in revenue_chart.iter(f"{SVG}text")]
    assert [t for c, t in texts if c == "axis-label"] == ["Day", f"Net revenue ({cfg.segments.base_currency})"]
    assert [t for c, t in texts if c == "legend-item"] == ["Revenue", "Forecast (mean)", "95 % interval",
                                                           "80 % interval"]
    ticks = [t for c, t in texts if c == "tick"]
    assert start.isoformat() in ticks  # the first day, even without sales
    # The y axis reaches the highest day and the forecast's highest bound.
    with engine.connect() as conn:
        top_bound = conn.execute(select(func.max(RevenueForecast.upper_95))).scalar_one()
    y_top = max(float(t.replace("k", "e3").replace("M", "e6")) for t in ticks if not re.match(r"\d{4}-", t))
    assert y_top >= max(float(max(r.revenue for r in rows)), top_bound)
    assert [t for c, t in ((t.get("class"), t.text) for t in orders_chart.iter(f"{SVG}text"))
            if c == "axis-label"] == ["Day", "Orders"]
    # The forecast's table: every stored day after the as-of day.
    with engine.connect() as conn:
        ahead = conn.execute(select(RevenueForecast.day, RevenueForecast.mean).where(RevenueForecast.day > AS_OF)
                             ).all()
    for day, mean in ahead:
        assert number(page.get(f"data-period={day.isoformat()}", "mean")) == pytest.approx(mean)

    # Cohorts and CLV: the library's objects; customer ids only, no address anywhere.
    for c in cohort_matrix(engine, cfg, AS_OF, 12):
        if c.customers:
            assert number(page.get(f"data-cohort={c.month}", "customers")) == c.customers
    clv = clv_report(engine, top=20)
    assert page.found[("customer_id",)] == [r["customer_id"] for r in clv.rows]
    assert [Decimal(v.replace(",", "")) for v in page.found[("clv_12m",)]] == [r["clv_12m"] for r in clv.rows]
    assert "@" not in re.sub(r"<style>.*?</style>", "", html, flags=re.DOTALL)

    # By week: the weekly report's rows.
    weekly = Values(client.get("/sales", params={"by": "week"}).text)
    for r in sales_report(engine, cfg, "week", AS_OF - timedelta(weeks=25, days=AS_OF.weekday()), AS_OF):
        assert Decimal(weekly.get(f"data-period={r.period}", "revenue").replace(",", "")) == r.revenue


def test_the_segments_page_shows_sizes_history_and_moves(crm, crm_client):
    engine, client = crm.engine, crm_client
    html = client.get("/segments").text
    page = Values(html)
    listed = list_segments(engine)
    with engine.connect() as conn:
        members = dict(conn.execute(select(Segment.name, func.count()).join(
            SegmentMembership, SegmentMembership.segment_id == Segment.id)
            .where(SegmentMembership.valid_to.is_(None)).group_by(Segment.name)).all())
        history = conn.execute(select(SegmentSize.as_of, Segment.name, SegmentSize.size)
                               .join(Segment, Segment.id == SegmentSize.segment_id)
                               .where(Segment.family == "rfm")).all()
        previous = conn.execute(select(func.max(SegmentSize.as_of)).where(SegmentSize.as_of < AS_OF)).scalar_one()

        def entries(since):
            return conn.execute(select(func.count()).select_from(SegmentMembership)
                                .join(Segment, Segment.id == SegmentMembership.segment_id)
                                .where(Segment.family == "rfm", SegmentMembership.valid_from >= since,
                                       SegmentMembership.valid_from <= AS_OF)).scalar_one()
        since_previous, since_february = entries(previous + timedelta(days=1)), entries(date(2026, 2, 1))
    # Sizes at the latest recompute: the library's list, and the open memberships counted here.
    assert listed.segments and sum(members.values()) > 0
    for s in listed.segments:
        assert number(page.get(f"data-segment={s.name}", "size")) == s.size == members.get(s.name, 0)
    # The RFM family's history: every stored size in the table, and the chart's legend names each segment.
    for day, name, size in history:
        assert number(page.get(f"data-period={day.isoformat()}", f"size:{name}")) == size
    [chart] = [ET.fromstring(s) for s in re.findall(r"<svg.*?</svg>", html, flags=re.DOTALL)]
    legend = [t.text for t in chart.iter(f"{SVG}text") if t.get("class") == "legend-item"]
    assert legend == sorted({n.split(":", 1)[1] for _, n, _ in history})
    # Moves into RFM segments since the recompute before (by default) or a chosen day: the library's pairs,
    # adding up to the entries counted here.
    for since, entered, shown in ((previous + timedelta(days=1), since_previous, page),
                                  (date(2026, 2, 1), since_february,
                                   Values(client.get("/segments", params={"since": "2026-02-01"}).text))):
        into_rfm = [p for p in transitions(engine, since, AS_OF).pairs if p.to_segment.startswith("rfm:")]
        assert sum(p.customers for p in into_rfm) == entered > 0
        for p in into_rfm:
            cell = shown.get(f"data-from={p.from_segment or '(entered)'}", f"to:{p.to_segment}")
            assert number(cell) == p.customers
    assert since_february > since_previous
    # Another family: its own segments only.
    lifecycle = Values(client.get("/segments", params={"family": "lifecycle"}).text)
    into_lifecycle = [p for p in transitions(engine, previous + timedelta(days=1), AS_OF).pairs
                      if p.to_segment.startswith("lifecycle:")]
    assert into_lifecycle
    for p in into_lifecycle:
        assert number(lifecycle.get(f"data-from={p.from_segment or '(entered)'}", f"to:{p.to_segment}")) == p.customers
    assert not [k for k in lifecycle.found if k[-1].startswith("to:rfm:")]
    assert client.get("/segments", params={"since": "2026-12-01"}).status_code == 400


def test_the_data_quality_page_pages_the_quarantine_by_number_only(crm, crm_client):
    engine, client = crm.engine, crm_client
    first = client.get("/data-quality")
    page = Values(first.text)
    q, b = QuarantinedRow, IngestBatch
    with engine.connect() as conn:
        per_night = dict(conn.execute(select(b.partition_date, func.sum(b.rows_quarantined))
                                      .where(b.status != "replaced").group_by(b.partition_date)).all())
        lines = set(conn.execute(select(q.batch_id, q.line_no).join(b, b.id == q.batch_id)
                                 .where(b.status != "replaced")).all())
        amount = conn.execute(select(func.count()).select_from(q).where(q.reason.like("amount %"))).scalar_one()
    for night, n in per_night.items():
        assert number(page.get(f"data-night={night.isoformat()}", "rows_quarantined")) == n
    assert number(page.get(f"data-night={AS_OF.isoformat()}", "reason:amount")) == amount > 0
    assert number(page.get("quarantined")) == len(lines) > QUARANTINE_PAGE_SIZE

    # A value quoted by a reason is text, never markup.
    assert scenario.MARKUP not in first.text and "&lt;B&gt;X&lt;/B&gt;" in first.text
    # Every line once over the pages; the pager's links carry a date and a page number, nothing else.
    seen = []
    pages = -(-len(lines) // QUARANTINE_PAGE_SIZE)
    for n in range(1, pages + 1):
        html = client.get("/data-quality", params={"page": n}).text
        rows = re.findall(r'<tr class="qline"><td>[^<]*</td><td>(\d+)</td><td>[^<]*</td><td class="n">(\d+)</td>',
                          html)
        seen += [(int(bid), int(line)) for bid, line in rows]
        for href in re.findall(r'<a href="([^"]*)" rel="(?:prev|next)"', html):
            assert re.fullmatch(r"\?as_of=\d{4}-\d{2}-\d{2}&amp;page=\d+", href), href
    assert len(seen) == len(lines) and set(seen) == lines
    # A page past the end shows the last one.
    assert f"Page {pages} of {pages}" in client.get("/data-quality", params={"page": 999}).text


def test_the_campaigns_page_shows_the_funnel_ledger_and_lift_of_each_run(crm, crm_client, crm_cli):
    engine, run_id, client = crm.engine, crm.run_id, crm_client
    page = Values(client.get("/campaigns").text)
    report = campaign_report(engine, "birthday")
    assert _cli("report", "campaign", "birthday") == json.loads(json.dumps(report.to_dict()))
    [run] = report.runs
    [treated] = run["treatment"]
    ctx = ("data-campaign=birthday", f"data-run={run_id}", "data-variant=")
    assert number(page.get(*ctx, "customers")) == treated["customers"]
    assert number(page.get(*ctx, "messages_sent")) == treated["messages_sent"]
    assert number(page.get(*ctx, "converters").split()[0]) == treated["conversion"]["converters"]
    assert Decimal(page.get(*ctx, "attributed_revenue").split()[0].replace(",", "")) == \
        Decimal(treated["attributed"]["revenue"])
    assert treated["lift"]["text"] in page.get(*ctx, "verdict")
    # Measured: the conversion difference with its 95 % interval, in points.
    diff = treated["lift"]["conversion"]["difference"]
    assert page.get(*ctx, "conversion_diff") == (f"{diff['estimate'] * 100:.2f} % [{diff['ci_low'] * 100:.2f} %, "
                                                 f"{diff['ci_high'] * 100:.2f} %]")
    assert number(page.get(*ctx[:2], "holdout_customers")) == run["holdout"]["customers"]

    # The funnel and the ledger, counted here from the plan and the messages.
    with engine.connect() as conn:
        outcomes = Counter(conn.execute(select(CampaignPlanRow.outcome).where(CampaignPlanRow.run_id == run_id))
                           .scalars())
        states = Counter(conn.execute(select(Message.state).where(Message.run_id == run_id)).scalars())
    section = ("data-campaign=birthday", f"data-run={run_id}")
    assert number(page.get(*section, "audience")) == sum(outcomes.values())
    assert number(page.get(*section, "recipients")) == outcomes["send"]
    assert number(page.get(*section, "holdout")) == outcomes["holdout"]
    for state, n in states.items():
        assert number(page.get(*section, f"ledger:{state}")) == n
    # A campaign name in the query string narrows the page; an unknown one shows no run.
    assert f"Run {run_id}" in client.get("/campaigns", params={"campaign": "birthday"}).text
    assert "<article" not in client.get("/campaigns", params={"campaign": "nope"}).text


def test_every_page_is_honest_on_an_empty_database(client):
    expected = {"/overview": ["stages", "ingest", "failed_runs", "forecast", "freshness"],
                "/segments": ["segments", "sizes", "transitions"],
                "/sales": ["sales", "forecast", "cohorts", "clv", "clv-distribution", "by-category", "by-store",
                           "by-segment"],
                "/data-quality": ["batches", "reasons", "lines"],
                "/campaigns": ["campaigns"]}
    for path, keys in expected.items():
        response = client.get(path)
        assert response.status_code == 200, path
        page = Values(response.text)
        for key in keys:
            assert re.search(r"nothing|not enough data|none", page.get(key), re.IGNORECASE), (path, key)
    for path in ("/sales?by=year", "/data-quality?page=0", "/overview?as_of=yesterday"):
        assert client.get(path).status_code == 422, path


def test_the_sales_page_breaks_sales_down_by_category_store_and_segment(crm, crm_client, crm_cli):
    engine, cfg, client = crm.engine, crm.cfg, crm_client
    start = AS_OF - timedelta(days=89)
    page = Values(client.get("/sales").text)
    with engine.connect() as conn:
        categories = set(conn.execute(select(SalesDaily.category).where(SalesDaily.day >= start)).scalars())
        stores = set(conn.execute(select(SalesDaily.store_id).where(SalesDaily.day >= start)).scalars())
        segments = set(conn.execute(select(SalesDailySegment.segment).where(SalesDailySegment.day >= start))
                       .scalars())
    assert categories and stores and segments
    # Each value's totals: the library's report of that value alone, summed over its days.
    for dim, values in (("category", categories), ("store", stores), ("segment", segments)):
        for v in values:
            rows = sales_report(engine, cfg, "day", start, AS_OF, **{dim: v})
            assert Decimal(page.get(f"data-segment={dim}:{v}", "revenue").replace(",", "")) == \
                sum(r.revenue for r in rows)
            assert number(page.get(f"data-segment={dim}:{v}", "orders")) == sum(r.orders for r in rows)
    # Each segment family adds up to all sales.
    total = sum(r.revenue for r in sales_report(engine, cfg, "day", start, AS_OF))
    for family in ("rfm", "lifecycle"):
        assert sum(Decimal(page.get(f"data-segment=segment:{s}", "revenue").replace(",", ""))
                   for s in segments if s.startswith(family + ":")) == total

    # Filtered: the rows are the report of that value, and the CLI's --json of it.
    category, segment = min(categories), max(segments)
    for option, value in (("category", category), ("segment", segment)):
        shown = Values(client.get("/sales", params={option: value}).text)
        assert shown.get(f"filter:{option}") == f"{option} {value}"
        rows = sales_report(engine, cfg, "day", start, AS_OF, **{option: value})
        cli = {r["period"]: r for r in _cli("report", "sales", "--by", "day", "--from", start.isoformat(), "--to",
                                            AS_OF.isoformat(), f"--{option}", value)["rows"]}
        assert rows and len(cli) == len(rows)
        for r in rows:
            assert Decimal(shown.get(f"data-period={r.period}", "revenue").replace(",", "")) == r.revenue == \
                Decimal(cli[r.period]["revenue"])
        assert not [k for k in shown.found if k[-1] == "mean"]  # no forecast of all sales beside a part
    # A segment with a category is refused with sales_report's own reason; a name too long is not accepted.
    both = client.get("/sales", params={"segment": segment, "category": category})
    assert both.status_code == 400 and "cannot be combined" in both.text
    assert client.get("/sales", params={"store": "x" * 65}).status_code == 422


def test_the_clv_distribution_matches_numpys_histogram(crm, crm_client):
    import numpy as np

    html = crm_client.get("/sales").text
    with crm.engine.connect() as conn:
        scores = [float(v) for v in conn.execute(select(CustomerClv.clv_12m)).scalars() if v is not None]
    bins = clv_distribution(crm.engine)
    edges = [b["low"] for b in bins] + [bins[-1]["high"]]
    counts, _ = np.histogram(scores, bins=edges)
    assert [b["customers"] for b in bins] == counts.tolist() and sum(counts) == len(scores) > 0
    shown = re.findall(r'<tr class="clv-bin">.*?data-key="customers">([^<]+)<', html)
    assert [int(number(n)) for n in shown] == counts.tolist()
    # The edges are round and cover every score.
    assert edges[0] <= min(scores) and edges[-1] >= max(scores)


def test_the_overview_shows_the_share_of_stale_profiles_of_the_latest_cleanup(engine, cfg, use_settings, client,
                                                                               monkeypatch):
    from tests.cleanup.support import AS_OF as CLEANED
    from tests.cleanup.support import config_with_share, stale_base

    assert Values(client.get("/overview").text).get("freshness") == "nothing yet"
    stale_base(engine, cfg)
    # The weekly cleanup, run by the CLI with its guardrail opened (half of these profiles are stale).
    monkeypatch.setenv("CRM_CONFIG", config_with_share(cfg.landing_dir.parent / "crm.yaml"))
    settings.cache_clear()
    out = CliRunner().invoke(main, ["cleanup", "--as-of", CLEANED.isoformat(), "--json"])
    settings.cache_clear()
    assert out.exit_code == 0, out.output
    run = json.loads(out.output)
    page = Values(client.get("/overview", params={"as_of": CLEANED.isoformat()}).text)
    for key in ("at_risk_share", "archived_share"):
        assert number(page.get(key)) == pytest.approx(run[key] * 100, abs=0.05)
    assert number(page.get("stale_share")) == pytest.approx((run["at_risk_share"] + run["archived_share"]) * 100,
                                                             abs=0.05)
    assert run["archived_share"] > 0 and run["at_risk_share"] > 0


@pytest.fixture
def airflow_history(airflow_db):
    """In the session's Airflow metadata database: two scheduled campaign DAGs (one paused), a DAG that is not
    a campaign, and failed and successful CRM runs; removed afterwards."""
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    soon, later = datetime(2026, 3, 21, 6, tzinfo=UTC), datetime(2026, 3, 22, 6, tzinfo=UTC)
    dags = {"crm_campaign_pages_b": (soon, False), "crm_campaign_pages_a": (later, False),
            "crm_campaign_pages_paused": (soon, True), "crm_pages_ingest": (soon, False)}
    runs = [("crm_pages_ingest", "scheduled__2099-03-19T02:00:00+00:00", "failed", 1),
            ("crm_campaign_pages_a", "manual__2099-03-20T08:00:00+00:00", "failed", 2),
            ("crm_pages_ingest", "scheduled__2099-03-20T02:00:00+00:00", "success", 3)]
    with create_session() as session:
        session.add(DagBundleModel(name="crm_pages_test"))
        session.flush()
        for dag_id, (after, paused) in dags.items():
            session.add(DagModel(dag_id=dag_id, bundle_name="crm_pages_test", is_paused=paused, is_stale=False,
                                 next_dagrun=after, next_dagrun_create_after=after))
        session.flush()
        for dag_id, run_id, state, day in runs:
            # Later than any run the suite's own DAG tests leave in this shared database, so they lead the list.
            at = datetime(2099, 3, 18 + day, 2, tzinfo=UTC)
            session.add(DagRun(dag_id=dag_id, run_id=run_id, run_type=run_id.split("__")[0], state=state,
                               run_after=at, start_date=at, logical_date=at))
    yield dags, runs
    with create_session() as session:
        session.query(DagRun).filter(DagRun.dag_id.in_(list(dags))).delete(synchronize_session=False)
        session.query(DagModel).filter(DagModel.dag_id.in_(list(dags))).delete(synchronize_session=False)
        session.query(DagBundleModel).filter(DagBundleModel.name == "crm_pages_test").delete()


def test_the_overview_lists_the_next_campaign_runs_and_links_failed_dag_runs(airflow_history, client):
    html = client.get("/overview").text
    page = Values(html)
    # Unpaused campaign DAGs only, the soonest first.
    # Other tests' campaign DAGs may be in this shared metadata database too: only the fixture's are checked.
    shown = [(d, link) for d, link in re.findall(
        r'<tr data-campaign="([^"]+)"><th scope="row"><a href="([^"]+)" target="_top">', html) if "_pages_" in d]
    assert [d for d, _ in shown] == ["crm_campaign_pages_b", "crm_campaign_pages_a"]
    assert page.get("data-campaign=crm_campaign_pages_b", "runs_after") == "2026-03-21 06:00+00:00"
    assert shown[0][1] == "../dags/crm_campaign_pages_b"
    # Failed runs, the latest first, each linking to its run in Airflow's UI (relative: a sub-path survives).
    failed = re.findall(r'data-key="dag_run" href="([^"]+)" target="_top">([^<]+)<', html)
    assert [run for _, run in failed][:2] == ["manual__2099-03-20T08:00:00+00:00",
                                              "scheduled__2099-03-19T02:00:00+00:00"]
    assert failed[0][0] == "../dags/crm_campaign_pages_a/runs/manual__2099-03-20T08%3A00%3A00%2B00%3A00"
    assert "scheduled__2099-03-20T02:00:00+00:00" not in html  # a successful run is not listed
    assert "crm_campaign_pages_paused" not in html
