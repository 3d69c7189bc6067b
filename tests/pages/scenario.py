"""A small CRM that the nightly stages have run over, for the pages' tests: profiles and purchases landed as
files and ingested (with bad lines that go to quarantine), segments recomputed, the sales cube built, a
campaign planned, sent and measured. The forecast and lifetime-value fits take seconds to minutes, so their
stored rows (the tables those fits write and the pages read) are written directly."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import insert, update

from crm_tasks.analytics.sales import refresh_sales
from crm_tasks.ingest.batches import ingest_dates
from crm_tasks.results.campaigns import refresh_results
from crm_tasks.segments.compute import recompute
from crm_tasks.store.models import ClvFit, CustomerClv, ForecastFit, Message, RevenueForecast
from tests.analytics.test_sales import _buy
from tests.factories import add_customers, campaign, plan
from tests.helpers import customer, purchase, write_csv

AS_OF = date(2026, 3, 20)
FIRST_NIGHT = date(2026, 3, 19)
CAMPAIGN_DAY = date(2026, 3, 1)
KIDS = 260  # customers with a birthday on the campaign's day
BAD_LINES = 57  # more than one page of quarantined lines (50)
MARKUP = "<B>X</B>"  # upper case: ingest upper-cases a currency before judging it


def _at(day: date, hour: int = 11) -> str:
    return f"{day.isoformat()}T{hour:02d}:00:00+05:30"


def ingest(engine, cfg) -> None:
    """Two nights of files: ten good profiles and two bad ones, then purchases over February and March
    with refunds, and on the second night ``BAD_LINES`` lines with a bad amount or currency."""
    good = [customer(f"C{i}") for i in range(10)]
    bad = [customer("X1", email="not-an-address"), customer("X2", country="ZZ")]
    write_csv(cfg.landing_dir, "customers", FIRST_NIGHT.isoformat(), good + bad)
    rows, tid = [], 0
    for i in range(10):
        for day in (date(2026, 2, 2 + i), date(2026, 3, 1 + i)):
            tid += 1
            rows.append(purchase(f"L{tid}", f"C{i}", _at(day), f"{100 + 10 * i}.50"))
    rows.append(purchase("L-refund", "C3", _at(date(2026, 3, 12)), "-40.00"))
    write_csv(cfg.landing_dir, "purchases", FIRST_NIGHT.isoformat(), rows)
    night2 = [purchase(f"N{i}", f"C{i % 10}", _at(AS_OF, 9), "75.25") for i in range(20)]
    # The first bad currency is markup: quarantine reasons quote it, and a page must show it as text.
    night2 += [purchase(f"B{i}", "C1", _at(AS_OF, 9), "abc" if i % 2 else "10.00",
                        currency="INR" if i % 2 else "QQQ" if i else MARKUP) for i in range(BAD_LINES)]
    write_csv(cfg.landing_dir, "purchases", AS_OF.isoformat(), night2)
    # So many bad lines would reject the file as a whole; the pages must show a file that loads with them.
    lenient = cfg.model_copy(update={"reject_threshold": 1.0})
    ingest_dates(engine, lenient, [FIRST_NIGHT, AS_OF])


def nightly(engine, cfg) -> None:
    """Segments at the end of February and on the as-of day, and the sales cube."""
    for day in (date(2026, 2, 28), AS_OF):
        recompute(engine, cfg, day)
    refresh_sales(engine, cfg, AS_OF)


def forecast_rows(engine, fit_date: date = AS_OF - timedelta(days=1), days: int = 90) -> None:
    """A stored fit and its days, as forecast_revenue writes them."""
    totals = {"30": {"days": 30, "mean": 3000.0, "lower_80": 2500.0, "upper_80": 3500.0, "lower_95": 2200.0,
                     "upper_95": 3800.0}}
    with engine.begin() as conn:
        conn.execute(insert(ForecastFit).values(
            fit_date=fit_date, status="fitted", model="ETS(A,N,A)", params={"totals": totals}, history_days=46,
            better_than_baseline=None, detail="no backtest", seconds=0.5))
        conn.execute(insert(RevenueForecast), [
            {"fit_date": fit_date, "day": fit_date + timedelta(days=k), "mean": 100.0 + k, "lower_80": 80.0 + k,
             "upper_80": 120.0 + k, "lower_95": 70.0 + k, "upper_95": 130.0 + k} for k in range(1, days + 1)])


def clv_rows(engine) -> None:
    """Scores for the ten buyers, as fit_clv writes them."""
    with engine.begin() as conn:
        conn.execute(insert(ClvFit).values(as_of=AS_OF, status="fitted", params={}, customers=10,
                                           repeat_customers=10, detail=None, seconds=1.0))
        conn.execute(insert(CustomerClv), [
            {"customer_id": f"C{i}", "as_of": AS_OF, "frequency": 1, "recency_days": 28.0, "tenure_days": 46.0,
             "monetary": Decimal(100), "p_alive": 0.9 - i / 100, "purchases_90": 1.5, "purchases_365": 4.0,
             "clv_12m": Decimal(f"{500 + 37 * ((i * 7) % 10)}.25")} for i in range(10)])


def measured_campaign(engine, cfg) -> int:
    """A birthday campaign with a holdout planned for real, sent (two messages failing for good), bought
    from, and measured; returns its run id."""
    # Enough customers in each group (crm.yaml's results.min_group) for the lift to be measured.
    add_customers(engine, *({"customer_id": f"K{i:03d}", "birthday": date(1990, 3, 1)} for i in range(KIDS)))
    run_at = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
    result = plan(engine, cfg, campaign(holdout_share=0.5), CAMPAIGN_DAY, run_at, record=True, dry_run=False)
    with engine.begin() as conn:
        conn.execute(update(Message).values(state="sent", sent_at=Message.send_at))
        keys = sorted(conn.execute(Message.__table__.select()).mappings(), key=lambda m: m["idempotency_key"])
        for m in keys[:2]:
            conn.execute(update(Message).where(Message.idempotency_key == m["idempotency_key"])
                         .values(state="failed", last_error="550 mailbox unavailable"))
    _buy(engine, [(f"K{i:03d}", run_at + timedelta(days=2), "60", "INR", "S1", "grocery", 1)
                  for i in range(0, KIDS, 3)])
    refresh_results(engine, cfg, AS_OF)
    return result.run_id


def everything(engine, cfg) -> int:
    ingest(engine, cfg)
    run_id = measured_campaign(engine, cfg)
    nightly(engine, cfg)
    forecast_rows(engine)
    clv_rows(engine)
    return run_id
