"""Daily revenue for the next 90 days, with 80 % and 95 % intervals, and an honest word on how good it is.

The series is the net revenue (orders minus refunds) of every business day in crm.yaml's time zone, in
the base currency of segments at its fixed rates, days without purchases as 0, from the first day with a
purchase (within ``forecast.history_days``) to the fit date. It is read from the daily sales cube
(``crm_tasks.analytics.sales``: exact per business day, daylight saving included), whose currencies are
converted exactly, day by day; the crm_reports DAG brings the cube up to date before it fits.

The model is exponential smoothing with a weekly season (statsmodels' ``ETSModel``): additive errors,
additive damped trend and additive season, or the multiplicative forms, each with and without the damped
trend, the one with the lowest AIC chosen. Multiplicative forms need every day's revenue above zero, so a
closed day rules them out. The intervals are the model's prediction intervals (analytic for the additive
forms, from simulated paths for the multiplicative ones); those of the 7-, 30- and 90-day totals come from
simulated paths, since the daily errors are correlated and their bounds do not add up.

The backtest refits the chosen form at ``forecast.backtest_weeks`` weekly origins, the latest 28 days
before the fit date, each on the days before it only, and compares the next 7 and 28 days with what was
sold and with seasonal naive (the same weekday a week earlier, repeated). MAPE is in percent over the
days with revenue (a day of 0 has no percentage error); MASE is the mean absolute error over the
training days' own seasonal-naive error (1.0: as good as last week's figures in sample). The forecast
is **better than the baseline** only when both its MASE and its MAPE are below seasonal naive's at both
horizons, by at least ``forecast.margin`` (2 %) of them: where seasonal naive is the best forecast there
is, the fitted model becomes it (its weekly smoothing goes to 1) and wins or loses the tie by chance. The
stored ``mape``/``mase`` are those of the 28-day horizon; both horizons' are in ``params["backtest"]``.
"""

from __future__ import annotations

import csv
import inspect
import io
import logging
import time
import warnings
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

import numpy as np
import pandas as pd
from sqlalchemy import Engine, delete, func, insert, select

from crm_tasks.clock import Phases
from crm_tasks.errors import ConfigError
from crm_tasks.settings import ForecastSettings, Settings
from crm_tasks.store.models import ForecastFit, RevenueForecast, SalesDaily
from crm_tasks.store.types import to_base

log = logging.getLogger(__name__)

SEASON = 7  # days in a season: the week
HORIZONS = (7, 28)  # backtest horizons, in days
TOTALS = (7, 30, 90)  # the summary's sums of days
LEVELS = (80, 95)  # interval levels, percent
FITTED, NOT_ENOUGH_DATA, FAILED = "fitted", "not_enough_data", "failed"
_SEED = 20260  # simulated paths are seeded: the same data gives the same stored rows


# --- the model (pure) -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One ETS form: error, trend (None or additive) and damping, season (additive or multiplicative)."""

    error: str
    trend: str | None
    damped: bool
    seasonal: str

    @property
    def name(self) -> str:
        trend = "N" if self.trend is None else "A" + ("d" if self.damped else "")
        return f"ETS({self.error[0].upper()},{trend},{self.seasonal[0].upper()})"

    @property
    def multiplicative(self) -> bool:
        return "mul" in (self.error, self.seasonal)


CANDIDATES = (
    Spec("add", "add", True, "add"),
    Spec("add", None, False, "add"),
    Spec("mul", "add", True, "mul"),
    Spec("mul", None, False, "mul"),
)


def candidates_for(y: np.ndarray) -> tuple[Spec, ...]:
    """The forms that can be fitted to ``y``: multiplicative ones only if every value is above zero."""
    positive = bool(np.all(y > 0))
    return tuple(s for s in CANDIDATES if positive or not s.multiplicative)


def fit_ets(series: pd.Series, spec: Spec, start_params=None):
    """statsmodels' fitted ``ETSResults`` of ``spec`` on a daily ``series`` (its optimiser's chatter muted),
    the optimiser starting from ``start_params`` if given."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    model = ETSModel(series.astype(float), error=spec.error, trend=spec.trend, damped_trend=spec.damped,
                     seasonal=spec.seasonal, seasonal_periods=SEASON)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning and friends: the AIC and backtest judge the fit
        return model.fit(disp=False, start_params=start_params)


def choose(series: pd.Series) -> tuple[Spec, object, dict[str, float]]:
    """The candidate form with the lowest AIC on ``series``: its spec, fitted results, and every AIC."""
    best, aics = None, {}
    for spec in candidates_for(series.to_numpy()):
        try:
            results = fit_ets(series, spec)
        except (ValueError, np.linalg.LinAlgError) as exc:  # a form the data cannot carry; the others may
            log.info("forecast: %s not fitted: %s", spec.name, exc)
            continue
        if not np.isfinite(results.aic):
            continue
        aics[spec.name] = float(results.aic)
        if best is None or results.aic < best[1].aic:
            best = (spec, results)
    if best is None:
        raise ValueError("no ETS form could be fitted to the series")
    return best[0], best[1], aics


def _seeded(seed: int) -> dict:
    """The simulation's seed, by the name the installed statsmodels gives it (``random_state`` up to 0.14,
    ``rng`` from 0.15)."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSResults

    name = "rng" if "rng" in inspect.signature(ETSResults.simulate).parameters else "random_state"
    return {name: np.random.default_rng(seed)}


def forecast_frame(results, horizon: int, seed: int = _SEED) -> pd.DataFrame:
    """The next ``horizon`` days after the fitted series: ``mean``, ``lower_80``, ``upper_80``, ``lower_95``,
    ``upper_95``, indexed by day. Both levels come from one prediction (the same simulated paths where the
    form needs them), so the 95 % interval always contains the 80 % one."""
    n = results.nobs
    pred = results.get_prediction(start=n, end=n + horizon - 1, **_seeded(seed))
    frame = pd.DataFrame({"mean": np.asarray(pred.predicted_mean, dtype=float)})
    for level in LEVELS:
        bounds = pred.pred_int(alpha=1 - level / 100)
        frame[f"lower_{level}"] = np.asarray(bounds.iloc[:, 0], dtype=float)
        frame[f"upper_{level}"] = np.asarray(bounds.iloc[:, 1], dtype=float)
    frame.index = pd.date_range(results.data.row_labels[-1] + pd.Timedelta(days=1), periods=horizon, freq="D")
    return frame


def totals(results, frame: pd.DataFrame, simulations: int, seed: int = _SEED) -> dict[str, dict]:
    """The sums of the first 7, 30 and 90 forecast days: the sum of the daily means, and intervals from the
    quantiles of ``simulations`` simulated paths' sums."""
    horizon = len(frame)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = np.asarray(results.simulate(horizon, anchor="end", repetitions=simulations, **_seeded(seed)),
                           dtype=float).reshape(horizon, -1)
    out = {}
    for days in (d for d in TOTALS if d <= horizon):
        sums = paths[:days].sum(axis=0)
        entry = {"days": days, "mean": float(frame["mean"].iloc[:days].sum())}
        for level in LEVELS:
            tail = (100 - level) / 200
            entry[f"lower_{level}"], entry[f"upper_{level}"] = (float(q) for q in np.quantile(sums, [tail, 1 - tail]))
        out[str(days)] = entry
    return out


def seasonal_naive(history: np.ndarray, horizon: int, season: int = SEASON) -> np.ndarray:
    """The baseline: each day forecast as the same weekday in the last observed week."""
    last = np.asarray(history, dtype=float)[-season:]
    return np.resize(last, horizon)


def mape(actual: np.ndarray, forecast: np.ndarray) -> float | None:
    """Mean absolute percentage error, in percent, over the days whose actual value is not 0 (None if none)."""
    actual, forecast = np.asarray(actual, dtype=float), np.asarray(forecast, dtype=float)
    keep = actual != 0
    if not keep.any():
        return None
    return float(np.mean(np.abs((actual[keep] - forecast[keep]) / actual[keep])) * 100)


def naive_scale(history: np.ndarray, season: int = SEASON) -> float | None:
    """The in-sample mean absolute error of seasonal naive on ``history`` (MASE's denominator); None when it
    is 0 or there is not one season to compare with."""
    history = np.asarray(history, dtype=float)
    if len(history) <= season:
        return None
    scale = float(np.mean(np.abs(history[season:] - history[:-season])))
    return scale if scale > 0 else None


def mase(actual: np.ndarray, forecast: np.ndarray, history: np.ndarray, season: int = SEASON) -> float | None:
    """Mean absolute scaled error: the forecast's mean absolute error over ``history``'s seasonal-naive one."""
    scale = naive_scale(history, season)
    if scale is None:
        return None
    return float(np.mean(np.abs(np.asarray(actual, dtype=float) - np.asarray(forecast, dtype=float)))) / scale


@dataclass
class Backtest:
    """Errors per horizon (days) for the model and for seasonal naive, over ``origins`` forecast origins."""

    origins: int = 0
    by_horizon: dict[int, dict[str, float | None]] = field(default_factory=dict)

    def better(self, margin: float = 0.0) -> bool | None:
        """True only when the model's MASE and MAPE are below seasonal naive's, by at least ``margin`` of
        them, at every horizon; None without a backtest (no verdict, so the forecast is not shown as better)."""
        if not self.origins or not self.by_horizon:
            return None
        for e in self.by_horizon.values():
            if e["mase"] is None or e["baseline_mase"] is None or e["mase"] >= e["baseline_mase"] * (1 - margin):
                return False
            if e["baseline_mape"] is not None and (e["mape"] is None
                                                   or e["mape"] >= e["baseline_mape"] * (1 - margin)):
                return False
        return True

    def to_dict(self) -> dict:
        return {"origins": self.origins, "horizons": {str(h): e for h, e in self.by_horizon.items()}}


def origins_for(n: int, weeks: int, min_history: int, horizon: int = max(HORIZONS)) -> list[int]:
    """The backtest's origins (the number of days each fit sees), latest first: a week apart, the latest
    ``horizon`` days before the end, none with fewer than ``min_history`` days behind it."""
    return [o for o in (n - horizon - SEASON * j for j in range(weeks)) if o >= min_history]


def backtest(series: pd.Series, spec: Spec, weeks: int, min_history: int) -> Backtest:
    """Refit ``spec`` at each weekly origin on the days before it, forecast the next 28 days, and score the
    first 7 and all 28 against what happened, next to seasonal naive from the same origin. Each refit starts
    its optimiser afresh: starting it from the full fit's parameters halves the time, but steers damped-trend
    fits towards the full fit's optimum, which is knowledge of the days the backtest holds out."""
    y = series.to_numpy(dtype=float)
    origins = origins_for(len(y), weeks, min_history)
    longest = max(HORIZONS)
    errors: dict[int, dict[str, list]] = {h: {k: [] for k in ("ape_m", "ape_b", "mase", "baseline_mase")}
                                          for h in HORIZONS}
    used = 0
    for o in origins:
        train, actual = series.iloc[:o], y[o:o + longest]
        try:
            predicted = np.asarray(fit_ets(train, spec).forecast(longest), dtype=float)
        except (ValueError, np.linalg.LinAlgError) as exc:
            log.info("forecast backtest: origin %s skipped: %s", series.index[o].date(), exc)
            continue
        if not np.all(np.isfinite(predicted)):
            continue
        used += 1
        naive = seasonal_naive(y[:o], longest)
        scale = naive_scale(y[:o])
        for h in HORIZONS:
            a, m, b = actual[:h], predicted[:h], naive[:h]
            keep = a != 0
            errors[h]["ape_m"].extend(np.abs((a[keep] - m[keep]) / a[keep]))
            errors[h]["ape_b"].extend(np.abs((a[keep] - b[keep]) / a[keep]))
            if scale is not None:
                errors[h]["mase"].append(float(np.mean(np.abs(a - m))) / scale)
                errors[h]["baseline_mase"].append(float(np.mean(np.abs(a - b))) / scale)

    def mean(values: list, scale: float = 1.0) -> float | None:
        return float(np.mean(values)) * scale if values else None

    return Backtest(used, {h: {"mape": mean(e["ape_m"], 100), "mase": mean(e["mase"]),
                               "baseline_mape": mean(e["ape_b"], 100), "baseline_mase": mean(e["baseline_mase"])}
                           for h, e in errors.items()} if used else {})


@dataclass
class Fit:
    """A fitted forecast: the chosen form, its days, the totals' intervals, the backtest and the parameters."""

    spec: Spec
    frame: pd.DataFrame
    totals: dict[str, dict]
    backtest: Backtest
    params: dict


def fit_series(series: pd.Series, settings: ForecastSettings) -> Fit:
    """Choose the form by AIC, forecast ``settings.horizon_days`` days with intervals, backtest the form.
    ``series`` is daily with a DatetimeIndex; the caller has checked it is long enough."""
    spec, results, aics = choose(series)
    frame = forecast_frame(results, settings.horizon_days)
    sums = totals(results, frame, settings.simulations)
    bt = backtest(series, spec, settings.backtest_weeks, settings.min_history_days)
    params = {"form": {"error": spec.error, "trend": spec.trend, "damped_trend": spec.damped,
                       "seasonal": spec.seasonal, "seasonal_periods": SEASON},
              "estimates": {k: float(v) for k, v in zip(results.param_names, results.params, strict=True)},
              "aic": aics, "history_start": series.index[0].date().isoformat(),
              "totals": sums, "backtest": bt.to_dict() | {"margin": settings.margin}}
    return Fit(spec, frame, sums, bt, params)


# --- the series from the database -------------------------------------------------------------------------


def daily_revenue(engine: Engine, cfg: Settings, as_of: date, days: int | None = None) -> pd.Series:
    """Net revenue per local day (base currency, float) for the ``days`` days up to ``as_of`` (default
    ``forecast.history_days``), 0 where nothing was sold, starting at the first day with a sale (an empty
    Series when there is none). Read from the daily sales cube (``crm_tasks.analytics.sales``), which must be
    up to ``as_of``: the crm_reports DAG refreshes it first, and `crm report forecast --fit` does too. Each
    day's currencies are converted exactly (``to_base``), then the series is floats."""
    days = days or cfg.forecast.history_days
    first = as_of - timedelta(days=days - 1)
    with engine.connect() as conn:
        rows = conn.execute(select(SalesDaily.day, SalesDaily.currency, func.sum(SalesDaily.revenue))
                            .where(SalesDaily.day >= first, SalesDaily.day <= as_of)
                            .group_by(SalesDaily.day, SalesDaily.currency)).all()
    if not rows:
        return pd.Series([], dtype=float, index=pd.DatetimeIndex([], freq="D"))
    rates, base = cfg.segments.exchange_rates, cfg.segments.base_currency
    revenue: dict[date, Decimal] = {}
    for day, currency, amount in rows:
        revenue[day] = revenue.get(day, Decimal(0)) + to_base(amount, currency, rates, base)
    index = pd.date_range(min(revenue), as_of, freq="D")
    return pd.Series([float(revenue.get(d.date(), 0)) for d in index], index=index, dtype=float)


# --- the nightly fit --------------------------------------------------------------------------------------


@dataclass
class ForecastResult:
    """What one fit did: counts, errors and time; no customer data."""

    fit_date: date
    status: str
    model: str = ""
    history_days: int = 0
    days: int = 0
    mape: float | None = None
    mase: float | None = None
    baseline_mape: float | None = None
    baseline_mase: float | None = None
    better_than_baseline: bool | None = None
    detail: str | None = None
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        r = _rounded
        return {"fit_date": self.fit_date.isoformat(), "status": self.status, "model": self.model,
                "history_days": self.history_days, "days": self.days, "mape": r(self.mape), "mase": r(self.mase),
                "baseline_mape": r(self.baseline_mape), "baseline_mase": r(self.baseline_mase),
                "better_than_baseline": self.better_than_baseline, "detail": self.detail,
                "seconds": round(self.seconds, 3), "phases": self.phases}


def forecast_revenue(engine: Engine, cfg: Settings, as_of: date) -> ForecastResult:
    """Fit the forecast on the days up to ``as_of`` and store its days and its fit row under that fit date,
    in one transaction, replacing an earlier fit of the same date. Too little history is recorded as
    ``not_enough_data``, a model that cannot be fitted as ``failed``, both with the reason and no days."""
    started = time.perf_counter()
    phases = Phases()
    settings = cfg.forecast
    series = daily_revenue(engine, cfg, as_of)
    phases.done("read")
    result = ForecastResult(as_of, FITTED, history_days=len(series))
    fit = None
    if len(series) < settings.min_history_days:
        result.status = NOT_ENOUGH_DATA
        result.detail = (f"{len(series)} days from the first purchase to {as_of}; the forecast needs at least "
                         f"{settings.min_history_days} (forecast.min_history_days)")
    else:
        try:
            fit = fit_series(series, settings)
        except (ValueError, np.linalg.LinAlgError) as exc:
            result.status, result.detail = FAILED, f"{exc.__class__.__name__}: {exc}"
        phases.done("fit")
    if fit is not None:
        headline = fit.backtest.by_horizon.get(max(HORIZONS), {})
        result.model, result.days = fit.spec.name, len(fit.frame)
        result.mape, result.mase = headline.get("mape"), headline.get("mase")
        result.baseline_mape, result.baseline_mase = headline.get("baseline_mape"), headline.get("baseline_mase")
        result.better_than_baseline = fit.backtest.better(settings.margin)
        if result.better_than_baseline is None:
            result.detail = (f"no backtest: it needs {settings.min_history_days + max(HORIZONS)} days of history; "
                             "not shown as better than seasonal naive")
    with engine.begin() as conn:
        conn.execute(delete(RevenueForecast).where(RevenueForecast.fit_date == as_of))
        conn.execute(delete(ForecastFit).where(ForecastFit.fit_date == as_of))
        if fit is not None:
            conn.execute(insert(RevenueForecast), [
                {"fit_date": as_of, "day": day.date(), **{k: float(v) for k, v in row.items()}}
                for day, row in fit.frame.iterrows()])
        result.seconds = time.perf_counter() - started
        conn.execute(insert(ForecastFit).values(
            fit_date=as_of, status=result.status, model=result.model, params=fit.params if fit else {},
            history_days=result.history_days, mape=result.mape, mase=result.mase, baseline_mape=result.baseline_mape,
            baseline_mase=result.baseline_mase, better_than_baseline=result.better_than_baseline,
            detail=result.detail, seconds=result.seconds))
    phases.done("store")
    result.phases = dict(phases)
    result.seconds = time.perf_counter() - started
    log.info("forecast as of %s: %s", as_of, result.summary())
    return result


# --- reading it back --------------------------------------------------------------------------------------


def _rounded(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


@dataclass
class ForecastReport:
    """A stored fit and its days, as ``crm report forecast`` and the demo print them."""

    fit: dict
    days: list[dict]
    currency: str

    def to_dict(self) -> dict:
        return {"fit": self.fit, "days": self.days}

    def verdict(self) -> str:
        """One sentence on the backtest, which says so plainly when the forecast is not better."""
        f = self.fit
        if f["status"] != FITTED:
            return f"no forecast ({f['status']}): {f['detail']}"
        if f["better_than_baseline"] is None:
            return "backtest: none yet (too little history): NOT shown as better than seasonal naive"
        horizons = (f.get("backtest") or {}).get("horizons", {})
        parts = [f"{h} days MASE {_fmt(e['mase'], 2)} vs {_fmt(e['baseline_mase'], 2)}, MAPE {_fmt(e['mape'], 1)} % "
                 f"vs {_fmt(e['baseline_mape'], 1)} %" for h, e in horizons.items()]
        word = ("better than seasonal naive" if f["better_than_baseline"]
                else "NOT better than seasonal naive: read it as a rough guide")
        return f"backtest ({(f.get('backtest') or {}).get('origins', 0)} origins; {'; '.join(parts)}): {word}"

    def lines(self) -> list[str]:
        f = self.fit
        head = (f"revenue forecast fitted {f['fit_date']} with {f['model'] or 'no model'} on {f['history_days']} days "
                f"({self.currency})")
        lines = [head]
        for key, entry in (f.get("totals") or {}).items():
            lines.append(f"  next {key:>2} days: {entry['mean']:,.0f} (80 %: {entry['lower_80']:,.0f} to "
                         f"{entry['upper_80']:,.0f}; 95 %: {entry['lower_95']:,.0f} to {entry['upper_95']:,.0f})")
        lines.append("  " + self.verdict())
        return lines

    def csv(self) -> str:
        """One row per day, for a spreadsheet; no cell can start a formula."""
        from crm_tasks.results.reports import safe_cell

        out = io.StringIO()
        writer = csv.writer(out)
        columns = ["date", "mean", *(f"{b}_{level}" for level in LEVELS for b in ("lower", "upper"))]
        writer.writerow(columns)
        for day in self.days:
            writer.writerow([safe_cell(day[c]) for c in columns])
        return out.getvalue()


def _fmt(x: float | None, digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def forecast_report(engine: Engine, cfg: Settings, fit_date: date | None = None) -> ForecastReport:
    """The fit of ``fit_date`` (default: the latest) with its days; ConfigError when there is none."""
    with engine.connect() as conn:
        stmt = select(ForecastFit)
        stmt = stmt.where(ForecastFit.fit_date == fit_date) if fit_date else stmt.order_by(ForecastFit.fit_date.desc())
        row = conn.execute(stmt.limit(1)).first()
        if row is None:
            when = f"fitted on {fit_date}" if fit_date else "yet"
            raise ConfigError(f"no revenue forecast {when}: the crm_reports DAG fits one nightly, or run "
                              "`crm report forecast --fit --as-of DATE`")
        fit = row
        days = conn.execute(select(RevenueForecast).where(RevenueForecast.fit_date == fit.fit_date)
                            .order_by(RevenueForecast.day)).all()
    params = fit.params or {}
    summary = {"fit_date": fit.fit_date.isoformat(), "status": fit.status, "model": fit.model,
               "history_days": fit.history_days, "mape": _rounded(fit.mape), "mase": _rounded(fit.mase),
               "baseline_mape": _rounded(fit.baseline_mape), "baseline_mase": _rounded(fit.baseline_mase),
               "better_than_baseline": fit.better_than_baseline, "detail": fit.detail,
               "backtest": params.get("backtest"), "totals": params.get("totals"), "seconds": _rounded(fit.seconds, 3)}
    rows = [{"date": d.day.isoformat(), "mean": round(d.mean, 2),
             **{f"{b}_{level}": round(getattr(d, f"{b}_{level}"), 2) for level in LEVELS for b in ("lower", "upper")}}
            for d in days]
    return ForecastReport(summary, rows, cfg.segments.base_currency)
