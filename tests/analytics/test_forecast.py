"""The revenue forecast: the model against statsmodels itself, the error measures by hand, the backtest's
verdict both ways, and the daily series, the stored fit and the command on both dialects."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import func, insert, select
from statsmodels.tsa.exponential_smoothing.ets import ETSModel

from crm_tasks.analytics import forecast as fc
from crm_tasks.analytics.sales import refresh_sales
from crm_tasks.cli import main
from crm_tasks.errors import ConfigError
from crm_tasks.settings import ForecastSettings
from crm_tasks.store.models import ForecastFit, Purchase, RevenueForecast

WEEK = np.array([0.0, -60, -40, -20, 30, 120, 90])  # Monday .. Sunday, around the level
RATES = {"INR": 1.0, "PKR": 0.30, "IRR": 0.002}


def _daily(values, start="2025-01-06") -> pd.Series:
    return pd.Series(np.asarray(values, dtype=float), index=pd.date_range(start, periods=len(values), freq="D"))


def trending(n: int = 400, seed: int = 1) -> pd.Series:
    """A level growing 3 a day, a weekly pattern and Gaussian noise (sd 25), starting on a Monday."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return _daily(1000 + 3 * t + WEEK[t % 7] + rng.normal(0, 25, n))


# --- the model, against statsmodels ---------------------------------------------------------------------


def test_the_stored_mean_is_statsmodels_own_for_the_same_form_and_the_intervals_nest():
    series = trending()
    spec, results, aics = fc.choose(series)
    assert spec.name in aics and aics[spec.name] == min(aics.values())
    frame = fc.forecast_frame(results, 90)
    own = ETSModel(series, error=spec.error, trend=spec.trend, damped_trend=spec.damped, seasonal=spec.seasonal,
                   seasonal_periods=7).fit(disp=False)
    np.testing.assert_allclose(frame["mean"].to_numpy(), own.forecast(90).to_numpy(), rtol=1e-6)
    assert frame.index[0] == series.index[-1] + pd.Timedelta(days=1) and len(frame) == 90
    assert (frame["lower_95"] <= frame["lower_80"]).all() and (frame["lower_80"] <= frame["mean"]).all()
    assert (frame["mean"] <= frame["upper_80"]).all() and (frame["upper_80"] <= frame["upper_95"]).all()
    # The week's shape survives into the forecast: Saturdays above Tuesdays.
    saturdays, tuesdays = frame[frame.index.weekday == 5]["mean"], frame[frame.index.weekday == 1]["mean"]
    assert saturdays.mean() - tuesdays.mean() > 100


def test_the_intervals_cover_about_as_often_as_they_say_on_held_out_days():
    """20 series of a weekly pattern and noise around a level, each fitted on a year and scored on the next
    14 days: 280 held-out days, of which about 80 % and 95 % fall inside the intervals."""
    spec = fc.Spec("add", None, False, "add")
    inside = {80: 0, 95: 0}
    total = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        t = np.arange(365 + 14)
        y = _daily(500 + WEEK[t % 7] + rng.normal(0, 30, len(t)))
        frame = fc.forecast_frame(fc.fit_ets(y.iloc[:365], spec), 14)
        actual = y.iloc[365:].to_numpy()
        for level in (80, 95):
            inside[level] += int(((actual >= frame[f"lower_{level}"]) & (actual <= frame[f"upper_{level}"])).sum())
        total += 14
    assert 0.70 <= inside[80] / total <= 0.92, inside
    assert 0.89 <= inside[95] / total <= 0.995, inside


def test_multiplicative_forms_only_where_every_day_sold_something():
    assert {s.multiplicative for s in fc.candidates_for(np.array([5.0, 3.0, 1.0]))} == {True, False}
    assert not any(s.multiplicative for s in fc.candidates_for(np.array([5.0, 0.0, 1.0])))
    closed_sundays = trending().where(lambda s: s.index.weekday != 6, 0.0)
    spec, _, aics = fc.choose(closed_sundays)
    assert not spec.multiplicative and set(aics) == {"ETS(A,Ad,A)", "ETS(A,N,A)"}


# --- the error measures, by hand --------------------------------------------------------------------------


def test_mape_mase_and_seasonal_naive_by_hand():
    history = np.array([1, 2, 3, 4, 5, 6, 7, 2, 3, 4, 5, 6, 7, 8], dtype=float)
    assert fc.seasonal_naive(history, 10).tolist() == [2, 3, 4, 5, 6, 7, 8, 2, 3, 4]
    assert fc.naive_scale(history) == 1.0  # every day is last week's plus 1
    actual, forecast = np.array([10.0, 0.0, 5.0]), np.array([8.0, 1.0, 5.0])
    assert fc.mape(actual, forecast) == pytest.approx(10.0)  # (2/10 + 0/5) / 2, in percent; the 0 day skipped
    assert fc.mase(actual, forecast, history) == pytest.approx(1.0)  # mean |error| (2 + 1 + 0) / 3 over 1.0
    assert fc.mase(actual, forecast, history * 2) == pytest.approx(0.5)
    assert fc.mape(np.zeros(3), forecast) is None
    assert fc.naive_scale(np.ones(14)) is None and fc.mase(actual, forecast, np.ones(14)) is None
    assert fc.naive_scale(np.ones(7)) is None


def test_origins_are_a_week_apart_and_keep_the_minimum_history():
    assert fc.origins_for(200, 8, 56) == [172, 165, 158, 151, 144, 137, 130, 123]
    assert fc.origins_for(100, 8, 56) == [72, 65, 58]
    assert fc.origins_for(80, 8, 56) == []


def test_the_verdict_needs_both_measures_at_both_horizons():
    good = {"mape": 10.0, "mase": 0.8, "baseline_mape": 12.0, "baseline_mase": 1.0}
    assert fc.Backtest(8, {7: good, 28: good}).better() is True
    assert fc.Backtest(8, {7: good, 28: good | {"mape": 13.0}}).better() is False  # MASE better, MAPE worse
    assert fc.Backtest(8, {7: good | {"mase": 1.0}, 28: good}).better() is False  # a tie is not better
    assert fc.Backtest(8, {7: good, 28: good}).better(margin=0.1) is True  # 0.8 < 0.9 and 10 < 10.8
    assert fc.Backtest(8, {7: good, 28: good}).better(margin=0.2) is False  # 0.8 is not below 0.8
    assert fc.Backtest(0, {}).better() is None


def test_the_backtest_beats_seasonal_naive_on_a_trending_seasonal_series():
    fit = fc.fit_series(trending(), ForecastSettings())
    assert fit.backtest.origins == 8 and fit.backtest.better(ForecastSettings().margin) is True
    for e in fit.backtest.by_horizon.values():
        assert e["mase"] < e["baseline_mase"] and e["mape"] < e["baseline_mape"]
    assert set(fit.totals) == {"7", "30", "90"}
    t7 = fit.totals["7"]
    assert t7["lower_95"] < t7["lower_80"] < t7["mean"] < t7["upper_80"] < t7["upper_95"]
    assert t7["mean"] == pytest.approx(fit.frame["mean"].iloc[:7].sum())


@pytest.mark.parametrize("seed", [3, 5])
def test_the_backtest_does_not_beat_seasonal_naive_where_naive_is_optimal(seed):
    """A seasonal random walk (each day is the same weekday last week plus noise): last week's figures are
    the best forecast there is, the fitted model becomes them, and the flag is false. Seed 5 is one where the
    model wins one horizon's MASE by a few per cent (under 2 % when this was written, 3 % with statsmodels 0.15: eight origins
    are a small sample) but not both measures by ``forecast.margin``, so it is not counted as better. (Noise
    around a fixed weekly pattern is no such case: there averaging the weeks beats copying the last one.)"""
    rng = np.random.default_rng(seed)
    y = np.empty(400)
    y[:7] = 1000 + WEEK
    for t in range(7, 400):
        y[t] = y[t - 7] + rng.normal(0, 40)
    fit = fc.fit_series(_daily(y), ForecastSettings())
    assert fit.backtest.origins == 8 and fit.backtest.better(ForecastSettings().margin) is False
    for e in fit.backtest.by_horizon.values():
        assert e["mase"] > 0.9 * e["baseline_mase"]  # nothing beats the optimal forecast by much


# --- the database -----------------------------------------------------------------------------------------


def _purchases(first: date, days: int, seed: int = 7, gap: tuple[int, int] = (200, 207)) -> list[dict]:
    """Purchases on every day but a closed week: a weekly pattern and a trend in INR, a few in PKR and IRR,
    refunds, and some at the edges of UTC days and of the local day of Asia/Kolkata (18:30 UTC)."""
    rng = np.random.default_rng(seed)
    rows, n = [], 0
    for d in range(days):
        if gap[0] <= d < gap[1]:
            continue
        day = first + timedelta(days=d)
        for k in range(3 + int(rng.integers(0, 3))):
            n += 1
            base = 400 + 2 * d + WEEK[day.weekday()] * 2 + rng.normal(0, 60)
            currency = "PKR" if k == 3 else "IRR" if k == 4 else "INR"
            amount = Decimal(f"{abs(base) / RATES[currency]:.2f}") * (-1 if n % 17 == 0 else 1)
            seconds = [0, 66599, 66600, 86399][k % 4] if n % 5 == 0 else int(rng.integers(0, 86400))
            at = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(seconds=seconds)
            rows.append({"transaction_id": f"T{n}", "customer_id": f"C{n % 50}", "purchased_at": at,
                         "amount": amount, "currency": currency, "store_id": "S1", "sku": "SKU-1",
                         "category": "grocery", "quantity": 1, "coupon_code": None, "batch_id": 1, "line_no": n})
    return rows


def _load(engine, rows, cfg, as_of: date):
    """The purchases, and the daily sales cube (the forecast's source) brought up to ``as_of``."""
    with engine.begin() as conn:
        conn.execute(insert(Purchase), rows)
    refresh_sales(engine, cfg, as_of)


def _by_local_day(rows, tz: str, first: date, last: date) -> pd.Series:
    frame = pd.DataFrame(rows)
    frame["day"] = pd.to_datetime(frame["purchased_at"], utc=True).dt.tz_convert(tz).dt.tz_localize(None).dt.floor("D")
    frame["value"] = frame["amount"].astype(float) * frame["currency"].map(RATES)
    kept = frame[(frame["day"] >= pd.Timestamp(first)) & (frame["day"] <= pd.Timestamp(last))]
    daily = kept.groupby("day")["value"].sum()
    return daily.reindex(pd.date_range(daily.index.min(), pd.Timestamp(last), freq="D"), fill_value=0.0)


@pytest.mark.parametrize("tz", ["Asia/Kolkata", "America/New_York"])
def test_the_daily_series_is_a_groupby_of_the_purchases_by_local_day(engine, cfg, tz):
    cfg = cfg.model_copy(update={"timezone": tz})
    rows = _purchases(date(2025, 1, 1), 400)
    as_of = date(2026, 1, 15)  # purchases after its end do not count
    _load(engine, rows, cfg, as_of)
    series = fc.daily_revenue(engine, cfg, as_of)
    expected = _by_local_day(rows, tz, date(2024, 1, 1), as_of)
    assert series.index.equals(expected.index) and series.index[-1] == pd.Timestamp(as_of)
    # Each day's currency is converted exactly to money's 4 decimals (at most 0.00005 off per currency).
    np.testing.assert_allclose(series.to_numpy(), expected.to_numpy(), rtol=0, atol=3 * 0.00005 + 1e-9)
    assert (series.iloc[201:206] == 0).all()  # the closed week, as zeros (its edges hold local spill-over)
    # A window shorter than the history starts at its own first day.
    short = fc.daily_revenue(engine, cfg, as_of, days=30)
    assert len(short) == 30 and np.allclose(short.to_numpy(), expected.iloc[-30:].to_numpy(), atol=2e-4)


def test_a_currency_without_a_rate_is_refused_by_name(engine, cfg):
    with pytest.raises(ConfigError, match="USD"):  # the cube keeps it; every conversion refuses it
        _load(engine, [r | {"currency": "USD"} for r in _purchases(date(2025, 1, 1), 3)], cfg, date(2025, 1, 3))
        fc.daily_revenue(engine, cfg, date(2025, 1, 3))


def test_the_fit_stores_90_days_and_its_row_and_a_rerun_replaces_them(engine, cfg):
    as_of = date(2026, 2, 4)
    _load(engine, _purchases(date(2025, 1, 1), 400), cfg, as_of)
    first = fc.forecast_revenue(engine, cfg, as_of)
    assert first.status == "fitted" and first.days == 90 and first.history_days == 400
    assert first.better_than_baseline is not None and first.mase is not None and first.baseline_mase is not None
    summary = first.summary()
    assert json.dumps(summary) and "C1" not in json.dumps(summary)  # no customer data

    def stored():
        with engine.connect() as conn:
            days = conn.execute(select(RevenueForecast).order_by(RevenueForecast.day)).all()
            fits = conn.execute(select(ForecastFit)).all()
        return days, fits

    days, fits = stored()
    assert len(days) == 90 and days[0].day == as_of + timedelta(days=1) and days[-1].day == as_of + timedelta(days=90)
    assert all(d.lower_95 <= d.lower_80 <= d.mean <= d.upper_80 <= d.upper_95 for d in days)
    [fit] = fits
    assert fit.status == "fitted" and fit.model == first.model and fit.params["backtest"]["origins"] == 8

    again = fc.forecast_revenue(engine, cfg, as_of)
    days_again, fits_again = stored()
    assert [tuple(d) for d in days_again] == [tuple(d) for d in days]  # replaced, identically
    assert len(fits_again) == 1 and again.model == first.model

    report = fc.forecast_report(engine, cfg)
    assert report.fit["fit_date"] == as_of.isoformat() and len(report.days) == 90
    assert set(report.days[0]) == {"date", "mean", "lower_80", "upper_80", "lower_95", "upper_95"}
    text = "\n".join(report.lines())
    assert "next 90 days" in text and ("NOT better" in text) != bool(first.better_than_baseline)


def test_too_little_history_is_reported_not_fitted(engine, cfg):
    _load(engine, _purchases(date(2026, 1, 1), 40), cfg, date(2026, 2, 9))
    result = fc.forecast_revenue(engine, cfg, date(2026, 2, 9))
    assert result.status == "not_enough_data" and result.days == 0 and result.history_days == 40
    assert "at least 56" in result.detail
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(RevenueForecast)).scalar_one() == 0
        assert conn.execute(select(ForecastFit.status)).scalar_one() == "not_enough_data"
    assert "no forecast (not_enough_data)" in "\n".join(fc.forecast_report(engine, cfg).lines())
    empty = fc.forecast_revenue(engine, cfg, date(2025, 6, 1))  # nothing sold yet
    assert empty.status == "not_enough_data" and empty.history_days == 0


def test_the_command_fits_shows_and_writes_a_safe_csv(use_settings, engine, tmp_path):
    with engine.begin() as conn:  # the command's --fit brings the cube up to date itself
        conn.execute(insert(Purchase), _purchases(date(2025, 1, 1), 400))
    runner = CliRunner()
    missing = runner.invoke(main, ["report", "forecast"])
    assert missing.exit_code == 1 and "no revenue forecast yet" in missing.output
    out = runner.invoke(main, ["report", "forecast", "--fit", "--as-of", "2026-02-04", "--json",
                               "--csv", str(tmp_path / "f.csv")])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    assert payload["fit"]["status"] == "fitted" and len(payload["days"]) == 90
    assert {"mape", "mase", "baseline_mape", "baseline_mase", "better_than_baseline"} <= set(payload["fit"])
    assert payload["days"][0]["date"] == "2026-02-05"
    rows = list(csv.DictReader(io.StringIO((tmp_path / "f.csv").read_text(encoding="utf-8"))))
    assert len(rows) == 90 and not any(v.startswith(("=", "+", "-", "@")) for r in rows for v in r.values())
    text = runner.invoke(main, ["report", "forecast"])
    assert text.exit_code == 0 and "next  7 days" in text.output and "seasonal naive" in text.output
    assert runner.invoke(main, ["report", "forecast", "--fit"]).exit_code == 2  # --fit needs --as-of


def test_the_airflow_task_fits_as_of_the_form_date_and_reports_too_little_history(use_settings, engine, monkeypatch):
    from crm_tasks.airflow import tasks

    _load(engine, _purchases(date(2026, 1, 1), 40), use_settings, date(2026, 2, 9))
    run = type("Run", (), {"run_after": datetime(2026, 3, 1, 1, 0, tzinfo=UTC)})()
    context = {"params": {"as_of": "2026-02-09"}, "triggering_asset_events": {}, "data_interval_end": None,
               "dag_run": run}
    monkeypatch.setattr(tasks, "get_current_context", lambda: context)
    summary = tasks.forecast_revenue()
    assert summary["fit_date"] == "2026-02-09" and summary["status"] == "not_enough_data"
    _load(engine, [r | {"transaction_id": "X" + r["transaction_id"]} for r in _purchases(date(2025, 10, 1), 90)],
          use_settings, date(2026, 2, 9))
    assert tasks.forecast_revenue()["status"] == "fitted"
