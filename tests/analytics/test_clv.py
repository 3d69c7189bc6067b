"""Customer lifetime value (crm_tasks/analytics/clv.py): the published CDNOW fit reproduced through our
fitting code, the SQL calibration data against lifetimes' own summary, the stored scores and fit records,
and the scores in segment rules, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert, select

from crm_tasks.analytics.clv import ClvStatus, calibration_summary, fit_clv, fit_models, score
from crm_tasks.analytics.purchase_days import refresh_purchase_days
from crm_tasks.errors import ConfigError
from crm_tasks.ingest import metrics
from crm_tasks.segments import compute as segments
from crm_tasks.settings import ClvSettings
from crm_tasks.store.models import ClvFit, CustomerClv, Purchase
from tests.factories import add_customers
from tests.segments.support import members

AS_OF = date(2026, 3, 31)
TZ = ZoneInfo("Asia/Kolkata")


# --- (a) the published CDNOW fit ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cdnow():
    from lifetimes.datasets import load_cdnow_summary_data_with_monetary_value

    return load_cdnow_summary_data_with_monetary_value()  # 2,357 customers, time in weeks


@pytest.fixture(scope="module")
def cdnow_models(cdnow):
    return fit_models(cdnow["frequency"], cdnow["recency"], cdnow["T"], cdnow["monetary_value"], ClvSettings())


def test_cdnow_fit_reproduces_the_published_parameters(cdnow_models):
    # Fader, Hardie and Lee (2005) on the CDNOW sample, as lifetimes' documentation quotes them; fitted on
    # the distinct (x, t_x, T) patterns with their counts, as our nightly fit does.
    bgnbd, gg = cdnow_models.params["bgnbd"], cdnow_models.params["gamma_gamma"]
    assert {k: round(v, 2) for k, v in bgnbd.items()} == {"r": 0.24, "alpha": 4.41, "a": 0.79, "b": 2.43}
    assert {k: round(v, 2) for k, v in gg.items()} == {"p": 6.25, "q": 3.74, "v": 15.45}
    # Gamma-Gamma assumes spend and frequency independent: the recorded check (0.11 in lifetimes' docs).
    assert cdnow_models.params["frequency_monetary_correlation"] == pytest.approx(0.1138, abs=1e-3)
    assert cdnow_models.params["independence_doubtful"] is False


def test_cdnow_scores_equal_lifetimes_own(cdnow, cdnow_models):
    bgf, ggf = cdnow_models.bgf, cdnow_models.ggf
    x, t, T, m = cdnow["frequency"], cdnow["recency"], cdnow["T"], cdnow["monetary_value"]
    ours = score(cdnow_models, x, t, T, m, discount_rate=0.01, month=4.345)  # weeks: lifetimes' freq="W"
    assert np.allclose(ours.p_alive, bgf.conditional_probability_alive(x, t, T), rtol=0, atol=1e-12)
    assert np.allclose(ours.purchases_90, bgf.conditional_expected_number_of_purchases_up_to_time(90, x, t, T),
                       rtol=0, atol=1e-12)
    reference = ggf.customer_lifetime_value(bgf, x, t, T, m, time=12, discount_rate=0.01, freq="W")
    assert np.allclose(ours.clv_12m, reference.to_numpy(), rtol=0, atol=1e-9)
    assert ours.clv_12m.max() > 100  # not trivially zero


def test_without_a_population_mean_spend_a_one_time_buyer_gets_no_clv(cdnow_models):
    # Gamma-Gamma's mean spend p v / (q - 1) exists only for q > 1; a buyer without a repeat day has only it.
    import copy

    models = copy.deepcopy(cdnow_models)
    models.ggf.params_ = pd.Series({"p": 6.0, "q": 0.8, "v": 15.0})
    scores = score(models, [0, 2], [0.0, 10.0], [20.0, 30.0], [0.0, 40.0], discount_rate=0.01, month=4.345)
    assert np.isnan(scores.clv_12m[0]) and scores.clv_12m[1] > 0
    assert np.isfinite(scores.p_alive).all()


# --- (b) the SQL summary against lifetimes' --------------------------------------------------------


def _purchases(engine, rows: list[tuple]) -> None:
    """(customer, local time, amount, currency) rows, and the metrics ingest would leave."""
    with engine.begin() as conn:
        conn.execute(insert(Purchase), [
            {"transaction_id": f"T{i}", "customer_id": cid, "purchased_at": at.replace(tzinfo=TZ).astimezone(UTC),
             "amount": Decimal(amount), "currency": cur, "store_id": "S1", "sku": "SKU-1", "category": "grocery",
             "quantity": 1, "coupon_code": None, "batch_id": 1, "line_no": i}
            for i, (cid, at, amount, cur) in enumerate(rows, start=1)])
        metrics.mark_all_for_rebuild(conn)
        metrics.refresh(conn)


def _reference(rows: list[tuple], rates: dict, as_of: date) -> pd.DataFrame:
    """lifetimes' summary of the same orders: local dates, base-currency values, refunds left out."""
    from lifetimes.utils import summary_data_from_transaction_data

    frame = pd.DataFrame(rows, columns=["customer_id", "at", "amount", "currency"])
    frame = frame[frame["amount"].map(Decimal) >= 0]
    frame = frame[frame["at"] < datetime.combine(as_of + timedelta(days=1), datetime.min.time())]
    frame["value"] = [float(Decimal(a) * rates[c]) for a, c in zip(frame["amount"], frame["currency"], strict=True)]
    frame["date"] = frame["at"].dt.normalize()
    return summary_data_from_transaction_data(frame, "customer_id", "date", "value",
                                              observation_period_end=pd.Timestamp(as_of), freq="D")


SUMMARY_ROWS = [
    # a: three purchase days, two orders on one of them, a refund on a day without an order, USD
    ("a", datetime(2026, 1, 5, 10, 0), "100.00", "INR"),
    ("a", datetime(2026, 2, 1, 9, 0), "50.50", "INR"),
    ("a", datetime(2026, 2, 1, 21, 0), "20.00", "PKR"),
    ("a", datetime(2026, 2, 10, 12, 0), "-30.00", "INR"),
    ("a", datetime(2026, 3, 31, 23, 59), "10.00", "INR"),  # the last minute of the as-of day counts
    ("a", datetime(2026, 4, 1, 0, 0), "999.00", "INR"),  # the first instant after it does not
    # b: one purchase: no repeat, no monetary value
    ("b", datetime(2026, 3, 1, 0, 0), "75.00", "INR"),
    # c: a refund only: not a buyer
    ("c", datetime(2026, 3, 2, 8, 0), "-10.00", "INR"),
    # d: a purchase on the as-of day and the day before, in rials; a zero-value order is a purchase day
    ("d", datetime(2026, 3, 30, 1, 0), "0.00", "IRR"),
    ("d", datetime(2026, 3, 31, 0, 0), "12345.6789", "IRR"),
    ("d", datetime(2025, 12, 31, 23, 59, 59), "1.00", "INR"),
]


def test_sql_summary_equals_lifetimes_summary(engine, cfg):
    _purchases(engine, SUMMARY_ROWS)
    refresh_purchase_days(engine, cfg)
    with engine.connect() as conn:
        ours = calibration_summary(conn, cfg, AS_OF).frame().sort_index()
    expected = _reference(SUMMARY_ROWS, cfg.segments.exchange_rates, AS_OF).sort_index()
    assert list(ours.index) == list(expected.index) == ["a", "b", "d"]
    pd.testing.assert_frame_equal(ours[["frequency", "recency", "T"]], expected[["frequency", "recency", "T"]],
                                  check_names=False)
    assert np.allclose(ours["monetary_value"], expected["monetary_value"], rtol=0, atol=1e-6)
    # The figures by hand: a's repeat days are 1 Feb (50.50 + 20 PKR at 0.30) and 31 Mar (10).
    assert ours.loc["a", "monetary_value"] == pytest.approx((50.50 + 6.0 + 10.0) / 2)
    assert ours.loc["b"].tolist() == [0.0, 0.0, 30.0, 0.0]


def test_a_currency_without_a_rate_stops_the_fit_naming_it(engine, cfg):
    _purchases(engine, [("a", datetime(2026, 1, 5, 10, 0), "10.00", "USD")])
    with pytest.raises(ConfigError, match=r"USD \(1 customers\).*segments.exchange_rates"):
        fit_clv(engine, cfg, AS_OF)


# --- (c) the nightly fit: stored scores, re-fit, not enough data -----------------------------------


def _simulated(n: int, seed: int, dropout: tuple[float, float] = (0.5, 1.5)) -> list[tuple]:
    """Purchases from a BG/NBD process (Poisson purchase days, a coin after each for dropping out) with
    Gamma spend, over 300 days before the as-of date; customers 'c000'..."""
    rng = np.random.default_rng(seed)
    rows = []
    end = datetime(2026, 3, 31, 12, 0)
    for i in range(n):
        rate, drop = rng.gamma(0.8, 1 / 25), rng.beta(*dropout)
        spend = rng.gamma(4.0, 250.0)
        day = float(rng.uniform(0, 300))
        while day < 300:
            rows.append((f"c{i:03d}", end - timedelta(days=300 - day), f"{rng.gamma(6.0, spend / 6):.2f}", "INR"))
            if rng.uniform() < drop:
                break
            day += rng.exponential(1 / rate)
    return rows


def _stored(engine) -> dict[str, tuple]:
    with engine.connect() as conn:
        return {r.customer_id: r for r in conn.execute(select(CustomerClv)).all()}


def _fits(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(select(ClvFit).order_by(ClvFit.as_of)).all()


def test_fit_stores_every_buyers_scores_and_a_refit_replaces_them(engine, cfg, caplog):
    rows = _simulated(300, seed=3)
    _purchases(engine, rows)
    caplog.set_level(logging.INFO, logger="crm_tasks.analytics.clv")
    result = fit_clv(engine, cfg, AS_OF)
    assert result.status == ClvStatus.FITTED, result.detail
    buyers = {r[0] for r in rows}
    assert result.customers == len(buyers)
    stored = _stored(engine)
    assert set(stored) == buyers
    one_day = [r for r in stored.values() if r.frequency == 0]
    repeat = [r for r in stored.values() if r.frequency > 0]
    assert one_day and repeat and result.repeat_customers == len(repeat)
    assert all(r.monetary is None for r in one_day) and all(r.monetary > 0 for r in repeat)
    assert all(0 <= r.p_alive <= 1 and 0 <= r.purchases_90 <= r.purchases_365 for r in stored.values())
    assert all(r.clv_12m is not None and r.clv_12m >= 0 and r.as_of == AS_OF for r in stored.values())
    assert isinstance(next(iter(stored.values())).clv_12m, Decimal)
    summary = result.summary()
    assert summary["params"]["bgnbd"].keys() == {"r", "alpha", "a", "b"}
    assert "c000" not in str(summary)  # counts and parameters only
    assert any("fitted on 300 buyers" in m for m in caplog.messages)
    (fit,) = _fits(engine)
    assert (fit.as_of, fit.status, fit.customers, fit.params) == (AS_OF, "fitted", 300, result.params)

    # The same date again: the same rows, one fit record.
    again = fit_clv(engine, cfg, AS_OF)
    assert again.params == result.params and _stored(engine) == stored and len(_fits(engine)) == 1

    # A later date replaces every row: new as-of, new tenure.
    later = fit_clv(engine, cfg, AS_OF + timedelta(days=10))
    assert later.status == ClvStatus.FITTED
    moved = _stored(engine)
    assert set(moved) == buyers and all(r.as_of == AS_OF + timedelta(days=10) for r in moved.values())
    assert all(moved[c].tenure_days == stored[c].tenure_days + 10 for c in buyers)
    assert [f.as_of for f in _fits(engine)] == [AS_OF, AS_OF + timedelta(days=10)]


def test_scores_rank_customers_as_the_model_says(engine, cfg):
    rows = _simulated(200, seed=5)
    # Two customers with eight purchase days each: one until yesterday, one silent for the last 200 days.
    rows += [("fresh", datetime(2026, 3, 30, 12, 0) - timedelta(days=3 * k), "500.00", "INR") for k in range(8)]
    rows += [("gone", datetime(2025, 9, 12, 12, 0) - timedelta(days=3 * k), "500.00", "INR") for k in range(8)]
    _purchases(engine, rows)
    assert fit_clv(engine, cfg, AS_OF).status == ClvStatus.FITTED
    stored = _stored(engine)
    fresh, gone = stored["fresh"], stored["gone"]
    assert (fresh.frequency, gone.frequency) == (7, 7)
    assert fresh.p_alive > 0.8 and gone.p_alive < 0.1, (fresh.p_alive, gone.p_alive)
    assert fresh.purchases_365 > gone.purchases_365 and fresh.clv_12m > gone.clv_12m


def test_not_enough_data_keeps_the_previous_scores_and_says_why(engine, cfg, caplog):
    _purchases(engine, _simulated(150, seed=7))
    assert fit_clv(engine, cfg, AS_OF).status == ClvStatus.FITTED
    before = _stored(engine)
    strict = cfg.model_copy(update={"clv": cfg.clv.model_copy(update={"min_customers": 10_000})})
    caplog.set_level(logging.INFO, logger="crm_tasks.analytics.clv")
    result = fit_clv(engine, strict, AS_OF + timedelta(days=1))
    assert result.status == ClvStatus.NOT_ENOUGH_DATA
    assert "150 buyers" in result.detail and "clv.min_customers (10000)" in result.detail
    assert _stored(engine) == before  # untouched
    fits = {f.as_of: f for f in _fits(engine)}
    assert fits[AS_OF + timedelta(days=1)].status == "not_enough_data"
    assert fits[AS_OF + timedelta(days=1)].detail == result.detail
    assert any("not_enough_data" in m and "previous scores are kept" in m for m in caplog.messages)


def test_an_empty_store_is_not_enough_data(engine, cfg):
    result = fit_clv(engine, cfg, AS_OF)
    assert (result.status, result.customers) == (ClvStatus.NOT_ENOUGH_DATA, 0)
    assert _stored(engine) == {}


def test_a_fit_that_cannot_converge_is_failed_with_the_reason(engine, cfg, monkeypatch):
    from crm_tasks.analytics import clv

    _purchases(engine, _simulated(150, seed=7))
    assert fit_clv(engine, cfg, AS_OF).status == ClvStatus.FITTED
    before = _stored(engine)

    def diverging(*_args, **_kwargs):
        raise clv.FitFailed("BG/NBD did not converge (precision loss); try clv.penalizer: 0.001")

    monkeypatch.setattr(clv, "fit_models", diverging)
    result = fit_clv(engine, cfg, AS_OF + timedelta(days=1))
    assert result.status == ClvStatus.FAILED and "clv.penalizer" in result.detail
    assert _stored(engine) == before


def test_a_fit_that_does_not_converge_is_retried_with_the_retry_penalizer(engine, cfg):
    # Dropout nearly the same for everyone: unpenalized, a and b run off to infinity and BFGS gives up.
    _purchases(engine, _simulated(150, seed=3, dropout=(1.0, 4.0)))
    no_retry = cfg.model_copy(update={"clv": cfg.clv.model_copy(update={"retry_penalizer": None})})
    failed = fit_clv(engine, no_retry, AS_OF)
    assert failed.status == ClvStatus.FAILED
    assert failed.detail.startswith("BG/NBD did not converge with penalizer 0.0 (")
    assert _stored(engine) == {}
    retried = fit_clv(engine, cfg, AS_OF)
    assert retried.status == ClvStatus.FITTED and retried.params["penalizer"] == 0.001
    assert retried.params["retried_because"] == failed.detail
    assert len(_stored(engine)) == retried.customers


def test_buyers_the_fit_cannot_score_are_named_with_the_reason():
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    from crm_tasks.analytics.clv import Models, unscored_reason

    # What a fit in which nobody ever stops buying gives (the benchmark's synthetic data): a and b near 0.
    bgf, ggf = BetaGeoFitter(), GammaGammaFitter()
    bgf.params_ = pd.Series({"r": 2.4, "alpha": 90.2, "a": 1.7e-23, "b": 3.0e-12})
    ggf.params_ = pd.Series({"p": 6.2, "q": 3.7, "v": 15.4})
    models = Models(bgf, ggf, {"bgnbd": dict(bgf.params_), "gamma_gamma": dict(ggf.params_)})
    frequency, recency, T = np.array([0, 5, 0]), np.array([0.0, 100.0, 0.0]), np.array([1.0, 300.0, 40.0])
    scores = score(models, frequency, recency, T, np.array([0.0, 40.0, 0.0]), discount_rate=0.01)
    assert np.isnan(scores.purchases_90[[0, 2]]).all() and np.isfinite(scores.purchases_90[1])
    reason = unscored_reason(models, scores, frequency)
    assert "no finite score for 2 buyers (2 of them without a repeat purchase day)" in reason
    assert "a + b below 1" in reason
    bgf.params_ = pd.Series({"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426})  # CDNOW's: everyone scored
    models.params["bgnbd"] = dict(bgf.params_)
    assert unscored_reason(models, score(models, frequency, recency, T, np.array([0.0, 40.0, 0.0]),
                                         discount_rate=0.01), frequency) is None


def test_fit_models_reports_a_non_converging_fit():
    from crm_tasks.analytics.clv import FitFailed

    # Everyone buys at the same steady pace to the end: nobody drops out, a and b run off to infinity.
    n = 400
    frequency = np.full(n, 10)
    T = np.full(n, 100.0)
    with pytest.raises(FitFailed, match="did not converge|unusable parameters"):
        fit_models(frequency, T.copy(), T, np.full(n, 50.0), ClvSettings(retry_penalizer=None))


# --- (d) the scores in segment rules ----------------------------------------------------------------


def test_rule_on_p_alive_and_clv_selects_exactly_the_scored_customers(engine, seg_cfg):
    rows = _simulated(200, seed=11)
    _purchases(engine, rows)
    buyers = sorted({r[0] for r in rows})
    add_customers(engine, *({"customer_id": c} for c in [*buyers, "never_bought"]))
    assert fit_clv(engine, seg_cfg, AS_OF).status == ClvStatus.FITTED
    (seg_cfg.segments.folder / "slipping.yaml").write_text(
        "name: slipping\ndescription: valuable but slipping away, for the test\n"
        "rule:\n  all:\n    - {field: p_alive, lt: 0.3}\n    - {field: clv_12m, gt: 100}\n")
    (seg_cfg.segments.folder / "unscored.yaml").write_text(
        "name: unscored\ndescription: customers without a lifetime-value score\n"
        "rule: {field: p_alive, is_null: true}\n")
    (seg_cfg.segments.folder / "not_likely.yaml").write_text(
        "name: not_likely\ndescription: not expected to buy twice in a year\n"
        "rule: {not: {field: purchases_365, gte: 2}}\n")
    result = segments.recompute(engine, seg_cfg, AS_OF)
    assert result.problems == []
    stored = _stored(engine)
    expected = {c for c, r in stored.items() if r.p_alive < 0.3 and r.clv_12m > Decimal(100)}
    assert expected and expected != set(stored)  # the rule separates someone from someone
    assert members(engine, "slipping") == expected
    assert members(engine, "unscored") == {"never_bought"}
    # NOT of unknown is true, as for every field: the customer without a score is in it.
    assert members(engine, "not_likely") == {c for c, r in stored.items() if r.purchases_365 < 2} | {"never_bought"}

    # Looking back before the fit: the scores are not seen, so nobody compares.
    earlier = segments.recompute(engine, seg_cfg, AS_OF - timedelta(days=5))
    assert earlier.problems == []
    assert members(engine, "slipping") == set()
    assert members(engine, "unscored") == set(buyers) | {"never_bought"}


def test_the_clv_fields_are_described_for_marketing(cfg):
    fields = segments.rule_fields(cfg)
    assert {n: fields[n].type for n in ("p_alive", "purchases_90", "purchases_365", "clv_12m")} == {
        "p_alive": "number", "purchases_90": "number", "purchases_365": "number", "clv_12m": "money"}


# --- crm report clv ---------------------------------------------------------------------------------


def test_crm_report_clv_fits_and_lists_the_top_customers(engine, use_settings):
    import json

    from click.testing import CliRunner

    from crm_tasks.cli import main

    empty = CliRunner().invoke(main, ["report", "clv"])
    assert empty.exit_code == 0 and "no lifetime-value scores yet" in empty.output
    assert CliRunner().invoke(main, ["report", "clv", "--fit"]).exit_code == 2  # --fit needs --as-of

    _purchases(engine, _simulated(150, seed=7))
    result = CliRunner().invoke(main, ["report", "clv", "--fit", "--as-of", "2026-03-31", "--top", "3", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["run"]["status"] == "fitted" and payload["fit"]["status"] == "fitted"
    assert payload["scored_as_of"] == "2026-03-31" and payload["customers"] == 150
    assert payload["fit"]["params"]["bgnbd"].keys() == {"r", "alpha", "a", "b"}
    rows = payload["rows"]
    assert [set(r) for r in rows] == [{"customer_id", "p_alive", "purchases_90", "purchases_365", "clv_12m"}] * 3
    stored = _stored(engine)
    best = sorted(stored.values(), key=lambda r: (-r.clv_12m, r.customer_id))[:3]
    assert [r["customer_id"] for r in rows] == [r.customer_id for r in best]
    assert [Decimal(r["clv_12m"]) for r in rows] == [r.clv_12m for r in best]

    human = CliRunner().invoke(main, ["report", "clv", "--top", "2"])
    assert human.exit_code == 0 and "scores as of 2026-03-31 for 150 buyers" in human.output
    assert best[0].customer_id in human.output


# --- the crm_reports task ---------------------------------------------------------------------------


def test_the_airflow_task_returns_the_summary_and_fails_a_failed_fit(engine, use_settings, monkeypatch):
    pytest.importorskip("airflow")
    from crm_tasks.airflow import tasks
    from crm_tasks.analytics import clv
    from crm_tasks.errors import CrmError

    monkeypatch.setattr(tasks, "_report_as_of", lambda _cfg: AS_OF)  # the run's date, as refresh_results reads it
    assert tasks.fit_clv()["status"] == "not_enough_data"  # a warning, not a failure
    _purchases(engine, _simulated(150, seed=7))
    summary = tasks.fit_clv()
    assert summary["status"] == "fitted" and summary["customers"] == 150 and summary["as_of"] == "2026-03-31"

    def diverging(*_args, **_kwargs):
        raise clv.FitFailed("BG/NBD did not converge (precision loss)")

    monkeypatch.setattr(clv, "fit_models", diverging)
    with pytest.raises(CrmError, match="could not be fitted: BG/NBD did not converge"):
        tasks.fit_clv()
