"""Customer lifetime value: BG/NBD for how often a customer buys and whether they are still a customer,
Gamma-Gamma for how much they spend, fitted on every purchase up to the as-of date.

The calibration data is one row per buyer, read in SQL from each customer's purchase days up to the end of
the as-of business day (``customer_days``, kept as the metrics are: ``crm_tasks/analytics/purchase_days.py``):

- **purchase days**: the local business days (crm.yaml's time zone) on which the customer placed at least
  one order (amount >= 0); several orders on one day are one purchase day (BG/NBD models the day as the
  purchase occasion, as lifetimes' ``summary_data_from_transaction_data`` does with local dates).
- ``frequency`` (x): purchase days after the first; ``recency_days`` (t_x): first to last purchase day;
  ``tenure_days`` (T): first purchase day to the as-of day.
- ``monetary`` (m): the mean value of the repeat purchase days, each day's orders converted into the
  base currency at ``segments.exchange_rates``. Refunds (amount < 0) are neither purchase days nor spend:
  the value forecast is of orders placed, before returns.

``fit_clv`` fits lifetimes' ``BetaGeoFitter`` on every buyer and ``GammaGammaFitter`` on those with a
repeat purchase day and positive spend, records the correlation between x and m (Gamma-Gamma assumes
none), scores every buyer (P(alive), expected purchase days in 90 and 365 days, 12-month CLV discounted
monthly) and replaces ``customer_clv`` and the as-of date's ``clv_fits`` row in one transaction. Too
few buyers, or a fit that does not converge, records ``not_enough_data`` or ``failed`` with the reason
and leaves the previous scores in place.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import date
from enum import StrEnum
from fractions import Fraction

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, case, delete, func, select, text

from crm_tasks.analytics.purchase_days import day_number, refresh_purchase_days
from crm_tasks.analytics.scales import nice_ticks
from crm_tasks.clock import Phases
from crm_tasks.errors import ConfigError
from crm_tasks.settings import ClvSettings, Settings
from crm_tasks.store import sql
from crm_tasks.store.bulk import bulk_insert, dialect_insert
from crm_tasks.store.models import ClvFit, CustomerClv
from crm_tasks.store.types import MONEY_UNITS

log = logging.getLogger(__name__)
MONTH_DAYS = 30  # lifetimes' month for CLV in days (freq="D")
HORIZON_MONTHS = 12


class ClvStatus(StrEnum):
    FITTED = "fitted"
    NOT_ENOUGH_DATA = "not_enough_data"
    FAILED = "failed"


@dataclass
class ClvResult:
    """One fit: its status, sizes, parameters and time. No customer ids: small enough for XCom and logs."""

    as_of: date
    status: str
    customers: int = 0  # buyers scored (or seen, when not fitted)
    repeat_customers: int = 0  # with a repeat purchase day
    params: dict = field(default_factory=dict)
    detail: str | None = None
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        out = asdict(self)
        out["as_of"] = self.as_of.isoformat()
        out["seconds"] = round(self.seconds, 3)
        return out


@dataclass
class Summary:
    """The calibration data: one entry per buyer, in days (``monetary`` NaN without a repeat day)."""

    customer_id: np.ndarray  # object (str)
    frequency: np.ndarray  # int64
    recency: np.ndarray  # float64, days
    T: np.ndarray  # float64, days
    monetary: np.ndarray  # float64, base currency

    def __len__(self) -> int:
        return len(self.frequency)

    def frame(self) -> pd.DataFrame:
        """As lifetimes lays it out (monetary_value 0 without a repeat day), indexed by customer id."""
        return pd.DataFrame({"frequency": self.frequency.astype(float), "recency": self.recency, "T": self.T,
                             "monetary_value": np.nan_to_num(self.monetary, nan=0.0)},
                            index=pd.Index(self.customer_id, name="customer_id"))


@dataclass
class Models:
    """The fitted models and what the record keeps of them."""

    bgf: object  # lifetimes.BetaGeoFitter
    ggf: object  # lifetimes.GammaGammaFitter
    params: dict


class FitFailed(Exception):
    """A model did not converge or its input cannot be fitted; the message says which and why."""


# --- the calibration data, in SQL ---------------------------------------------------------------

# Each buyer's purchase days up to the as-of day, from customer_days (kept per customer as the metrics are):
# the count, first and last day, and the value of the days after the first: one pass over narrow rows that
# SQLite reads in key order and PostgreSQL hashes by customer (counts_day instead of COUNT(DISTINCT day),
# which would sort ten million rows by customer).
_PURCHASE_DAYS = """
SELECT customer_id, SUM(CASE WHEN counts_day THEN 1 ELSE 0 END) - 1 AS frequency,
       MAX(day) - MIN(day) AS recency_days, :as_of_day - MIN(day) AS tenure_days, SUM(CASE WHEN first_day THEN NULL ELSE {value} END) AS repeat_value
FROM customer_days
WHERE day <= :as_of_day
GROUP BY customer_id
"""

_CURRENCIES = "SELECT currency, COUNT(*) FROM customer_metrics WHERE orders > 0 GROUP BY currency"


def calibration_summary(conn: Connection, cfg: Settings, as_of: date) -> Summary:
    """Every buyer's purchase days up to the end of ``as_of``, from the database (one statement).

    Raises ConfigError naming any purchase currency without an exchange rate."""
    dialect = conn.dialect.name
    rates = cfg.segments.exchange_rates
    missing = {cur: n for cur, n in conn.execute(text(_CURRENCIES)).all() if cur not in rates}
    if missing:
        listed = ", ".join(f"{cur} ({n} customers)" for cur, n in sorted(missing.items()))
        raise ConfigError(f"clv: purchases in currencies without an exchange rate: {listed}. Add them under "
                          f"segments.exchange_rates in crm.yaml (units of {cfg.segments.base_currency} per unit).")
    params: dict = {"as_of_day": day_number(as_of)}
    whens = []
    for i, (code, rate) in enumerate(sorted(rates.items())):
        params[f"cur_{i}"], params[f"rate_{i}"] = code, float(Fraction(rate))
        whens.append(f"WHEN :cur_{i} THEN :rate_{i}")
    value = f"{sql.money_as_float('value', dialect)} * (CASE currency {' '.join(whens)} END)"
    statement = _PURCHASE_DAYS.format(value=value)
    if dialect == "postgresql":
        # A million buyers' groups hashed in memory rather than spilled to disk (this transaction only); JIT
        # compiling a one-off statement costs more than it saves.
        conn.execute(text("SET LOCAL work_mem = '256MB'"))
        conn.execute(text("SET LOCAL jit = off"))
    # Raw rows, no type processing: a million buyers through the ORM would take seconds.
    rows = sql.execute(conn, statement, params).all()
    if not rows:
        empty = np.empty(0)
        return Summary(np.empty(0, dtype=object), empty.astype(np.int64), empty, empty, empty)
    ids, freq, rec, ten, repeat = zip(*rows, strict=True)
    frequency = np.asarray(freq, dtype=np.int64)
    repeat_value = np.asarray([np.nan if v is None else v for v in repeat], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        monetary = np.where(frequency > 0, repeat_value / np.maximum(frequency, 1), np.nan)
    return Summary(np.asarray(ids, dtype=object), frequency, np.asarray(rec, dtype=float),
                   np.asarray(ten, dtype=float), monetary)


# --- the models ----------------------------------------------------------------------------------


def _patterns(frequency, recency, T):
    """The distinct (x, t_x, T) patterns, how many buyers share each, and each buyer's pattern: the
    likelihood and the scores depend on nothing else (Fader and Hardie fit the same way)."""
    keys = np.column_stack([np.asarray(frequency, dtype=float), np.asarray(recency, dtype=float),
                            np.asarray(T, dtype=float)])
    unique, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    return unique, inverse.reshape(-1), counts


def fit_models(frequency, recency, T, monetary, settings: ClvSettings) -> Models:
    """Fit BG/NBD on every buyer and Gamma-Gamma on those with a repeat and positive spend, in the time unit
    of ``recency`` and ``T`` (days here; weeks for the published CDNOW fit). ``monetary`` is the mean value
    of the repeat purchases (0 or NaN without one). A fit that does not converge is tried once more with
    ``settings.retry_penalizer`` (the params say which penalizer was used). Raises FitFailed with the reason."""
    try:
        return _fit_models(frequency, recency, T, monetary, settings, settings.penalizer)
    except FitFailed as first:
        retry = settings.retry_penalizer
        if retry is None or retry == settings.penalizer:
            raise
        try:
            models = _fit_models(frequency, recency, T, monetary, settings, retry)
        except FitFailed as second:
            raise FitFailed(f"{first}; with clv.retry_penalizer {retry} too: {second}") from None
        models.params["retried_because"] = str(first)
        return models


def _fit_models(frequency, recency, T, monetary, settings: ClvSettings, penalizer: float) -> Models:
    from lifetimes import BetaGeoFitter, GammaGammaFitter
    from lifetimes.utils import ConvergenceError

    frequency = np.asarray(frequency, dtype=np.int64)
    monetary = np.nan_to_num(np.asarray(monetary, dtype=float), nan=0.0)
    unique, _inverse, counts = _patterns(frequency, recency, T)
    bgf, ggf = BetaGeoFitter(penalizer_coef=penalizer), GammaGammaFitter(penalizer_coef=penalizer)
    # lifetimes prints the optimiser's state when it gives up: keep it for the reason instead.
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            bgf.fit(unique[:, 0], unique[:, 1], unique[:, 2], weights=counts)
    except (ConvergenceError, ValueError, np.linalg.LinAlgError) as exc:
        raise FitFailed(f"BG/NBD did not converge with penalizer {penalizer} ({_reason(exc, printed)})") from None
    spend = (frequency > 0) & (monetary > 0)
    x, m = frequency[spend], monetary[spend]
    correlation = float(np.corrcoef(x, m)[0, 1]) if len(x) > 1 and x.std() > 0 and m.std() > 0 else None
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ggf.fit(x, m)
    except (ConvergenceError, ValueError, np.linalg.LinAlgError) as exc:
        raise FitFailed(f"Gamma-Gamma did not converge with penalizer {penalizer} ({_reason(exc, printed)})") \
            from None
    params = {
        "bgnbd": {k: float(v) for k, v in bgf.params_.items()},
        "gamma_gamma": {k: float(v) for k, v in ggf.params_.items()},
        "frequency_monetary_correlation": correlation,
        "independence_doubtful": correlation is not None and abs(correlation) > settings.max_correlation,
        "patterns": len(counts),
        "spend_customers": int(spend.sum()),
        "penalizer": penalizer,
        "discount_rate": settings.discount_rate,
    }
    for name, values in (("BG/NBD", params["bgnbd"]), ("Gamma-Gamma", params["gamma_gamma"])):
        if not all(np.isfinite(v) and v > 0 for v in values.values()):
            raise FitFailed(f"{name} gave unusable parameters {values} with penalizer {penalizer}")
    return Models(bgf, ggf, params)


def _reason(exc: Exception, printed: io.StringIO) -> str:
    message = " ".join(str(exc).split())
    for line in printed.getvalue().splitlines():
        if line.strip().startswith("message:"):
            return line.split(":", 1)[1].strip()
    return message or type(exc).__name__


@dataclass
class Scores:
    p_alive: np.ndarray
    purchases_90: np.ndarray
    purchases_365: np.ndarray
    clv_12m: np.ndarray  # NaN where not computable (no repeat day and Gamma-Gamma's q <= 1)


def score(models: Models, frequency, recency, T, monetary, *, discount_rate: float,
          months: int = HORIZON_MONTHS, month: float = MONTH_DAYS) -> Scores:
    """Every buyer's scores, computed once per distinct (x, t_x, T) pattern.

    ``clv_12m`` is lifetimes' ``customer_lifetime_value`` (Gamma-Gamma's expected value of a purchase times
    the expected purchases of each month, discounted at ``discount_rate`` a month), with each cumulative
    forecast computed once instead of twice; tests hold it to lifetimes' own to 1e-9."""
    bgf, ggf = models.bgf, models.ggf
    frequency = np.asarray(frequency, dtype=np.int64)
    monetary = np.nan_to_num(np.asarray(monetary, dtype=float), nan=0.0)
    unique, inverse, _counts = _patterns(frequency, recency, T)
    ux, ut, uT = unique[:, 0], unique[:, 1], unique[:, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p_alive = np.asarray(bgf.conditional_probability_alive(ux, ut, uT), dtype=float)
        expected = {h: np.asarray(bgf.conditional_expected_number_of_purchases_up_to_time(h, ux, ut, uT), dtype=float)
                    for h in (90, 365)}
        cumulative = [np.zeros(len(ux))] + [
            np.asarray(bgf.conditional_expected_number_of_purchases_up_to_time(k * month, ux, ut, uT), dtype=float)
            for k in range(1, months + 1)]
        discounted = sum((cumulative[k] - cumulative[k - 1]) / (1 + discount_rate) ** k for k in range(1, months + 1))
        value = np.asarray(ggf.conditional_expected_average_profit(frequency, monetary), dtype=float)
    # With q <= 1 the population's mean spend (p v / (q - 1)) does not exist: a buyer without a repeat day,
    # who has only that mean to go by, then gets no CLV rather than a negative one.
    value[~(value >= 0)] = np.nan
    clv = value * discounted[inverse]
    return Scores(p_alive[inverse], expected[90][inverse], expected[365][inverse],
                  np.where(np.isfinite(clv), clv, np.nan))


def unscored_reason(models: Models, scores: Scores, frequency) -> str | None:
    """Why some buyers got no finite score, or None when all did. BG/NBD's expected purchases of a buyer
    without a repeat day need a + b > 1 (the hypergeometric term's c = a + b - 1): a fit in which almost
    nobody ever stops buying drives a and b to 0, and those buyers cannot be scored."""
    broken = ~np.isfinite(np.stack([scores.p_alive, scores.purchases_90, scores.purchases_365])).all(0)
    if not broken.any():
        return None
    b = models.params["bgnbd"]
    one_timers = int((broken & (np.asarray(frequency) == 0)).sum())
    reason = (f"the fitted models give no finite score for {int(broken.sum())} buyers ({one_timers} of them "
              f"without a repeat purchase day); BG/NBD fitted a = {b['a']:.3g}, b = {b['b']:.3g}")
    if b["a"] + b["b"] <= 1:
        reason += (": with a + b below 1 the expected purchases of a buyer without a repeat day are undefined. "
                   "The data shows almost nobody stop buying (a, b near 0); a longer history, with customers "
                   "who did stop, fits")
    return reason


# --- the nightly fit ------------------------------------------------------------------------------


def fit_clv(engine: Engine, cfg: Settings, as_of: date) -> ClvResult:
    """Fit the models on every purchase up to the end of ``as_of`` and replace every buyer's scores and the
    date's fit record, in one transaction (re-running a date gives the same rows). Too few buyers or a fit
    that does not converge records why and leaves the previous scores in place."""
    started = time.perf_counter()
    phases = Phases()
    settings = cfg.clv
    result = ClvResult(as_of, ClvStatus.FITTED)
    refresh_purchase_days(engine, cfg)
    phases.done("purchase days")
    with engine.connect() as conn:
        summary = calibration_summary(conn, cfg, as_of)
        conn.rollback()
    phases.done("summary")
    result.customers, result.repeat_customers = len(summary), int((summary.frequency > 0).sum())
    models = scores = None
    if result.customers < settings.min_customers or result.repeat_customers < settings.min_repeat_customers:
        result.status = ClvStatus.NOT_ENOUGH_DATA
        result.detail = (f"{result.customers} buyers, {result.repeat_customers} with a repeat purchase day up to "
                         f"{as_of}; the fit needs at least clv.min_customers ({settings.min_customers}) and "
                         f"clv.min_repeat_customers ({settings.min_repeat_customers})")
    else:
        try:
            models = fit_models(summary.frequency, summary.recency, summary.T, summary.monetary, settings)
        except FitFailed as exc:
            result.status, result.detail = ClvStatus.FAILED, str(exc)
        phases.done("fit")
    if models is not None:
        result.params = models.params
        scores = score(models, summary.frequency, summary.recency, summary.T, summary.monetary,
                       discount_rate=settings.discount_rate)
        phases.done("score")
        reason = unscored_reason(models, scores, summary.frequency)
        if reason:
            result.status, result.detail, scores = ClvStatus.FAILED, reason, None
    with engine.begin() as conn:
        if scores is not None:
            _replace_scores(conn, as_of, summary, scores)
            phases.done("write")
        result.seconds = time.perf_counter() - started
        _record_fit(conn, result)
    result.phases = dict(phases)
    if result.status == ClvStatus.FITTED:
        log.info("clv as of %s: fitted on %d buyers (%d repeat), %s (%.1f s)", as_of, result.customers,
                 result.repeat_customers, _params_text(result.params), result.seconds)
        if result.params.get("independence_doubtful"):
            log.warning("clv as of %s: repeat purchase days and their value are correlated (%.2f): Gamma-Gamma "
                        "assumes they are not, so clv_12m leans the way of that correlation", as_of,
                        result.params["frequency_monetary_correlation"])
    else:
        log.warning("clv as of %s: %s: %s; the previous scores are kept", as_of, result.status, result.detail)
    return result


def _params_text(params: dict) -> str:
    b, g = params["bgnbd"], params["gamma_gamma"]
    return (f"BG/NBD r={b['r']:.3f} alpha={b['alpha']:.3f} a={b['a']:.3f} b={b['b']:.3f}, "
            f"Gamma-Gamma p={g['p']:.3f} q={g['q']:.3f} v={g['v']:.3f}")


_COLUMNS = ["customer_id", "as_of", "frequency", "recency_days", "tenure_days", "monetary", "p_alive",
            "purchases_90", "purchases_365", "clv_12m"]


def _money_units(values: np.ndarray) -> np.ndarray:
    """Floats as integer 1/10000 units (money's scale), NaN kept apart by the caller."""
    return np.round(np.nan_to_num(values, nan=0.0) * MONEY_UNITS).astype(np.int64)


def _replace_scores(conn: Connection, as_of: date, summary: Summary, scores: Scores) -> None:
    """Every buyer's row, in bulk: COPY from an Arrow table on PostgreSQL, executemany on SQLite."""
    if conn.dialect.name == "postgresql":
        import pyarrow as pa

        from crm_tasks.store.bulk import copy_money

        conn.execute(text("TRUNCATE customer_clv"))  # transactional, and no million dead rows
        n = len(summary)

        def money(values: np.ndarray) -> pa.Array:
            return copy_money(pa.array(_money_units(values), mask=np.isnan(values)))

        table = pa.table({
            "customer_id": pa.array(summary.customer_id, pa.string()),
            "as_of": pa.array(np.full(n, np.datetime64(as_of, "D"))),
            "frequency": pa.array(summary.frequency), "recency_days": pa.array(summary.recency),
            "tenure_days": pa.array(summary.T), "monetary": money(summary.monetary),
            "p_alive": pa.array(scores.p_alive), "purchases_90": pa.array(scores.purchases_90),
            "purchases_365": pa.array(scores.purchases_365), "clv_12m": money(scores.clv_12m),
        })
        bulk_insert(conn, "customer_clv", _COLUMNS, table)
        return
    conn.execute(delete(CustomerClv))

    def money_list(values: np.ndarray) -> list:
        units = _money_units(values).astype(object)
        units[np.isnan(values)] = None
        return units.tolist()

    day = as_of.isoformat()
    rows = zip(summary.customer_id.tolist(), [day] * len(summary), summary.frequency.tolist(),
               summary.recency.tolist(), summary.T.tolist(), money_list(summary.monetary), scores.p_alive.tolist(),
               scores.purchases_90.tolist(), scores.purchases_365.tolist(), money_list(scores.clv_12m), strict=True)
    bulk_insert(conn, "customer_clv", _COLUMNS, list(rows))


def _record_fit(conn: Connection, result: ClvResult) -> None:
    """Insert or replace the as-of date's fit record."""
    values = {"as_of": result.as_of, "status": str(result.status), "params": result.params,
              "customers": result.customers, "repeat_customers": result.repeat_customers,
              "detail": result.detail, "seconds": round(result.seconds, 3)}
    stmt = dialect_insert(conn)(ClvFit).values(**values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["as_of"],
                                            set_={k: v for k, v in values.items() if k != "as_of"}))


def latest_fit(conn: Connection):
    """The newest fit record (a row of clv_fits), whatever its status."""
    return conn.execute(select(ClvFit).order_by(ClvFit.as_of.desc()).limit(1)).first()


# --- reading the scores -----------------------------------------------------------------------------


@dataclass
class ClvReport:
    """The customers with the highest 12-month CLV and the fit their scores come from; the same object
    feeds ``crm report clv``, its ``--json`` and the tests."""

    scored_as_of: date | None  # the as-of date of the stored scores (None: never fitted)
    fit: dict | None  # that date's fit record
    latest: dict | None  # the latest attempt, when it is not the fit above (a failed or thin night)
    customers: int
    rows: list[dict]

    def to_dict(self) -> dict:
        return {"scored_as_of": self.scored_as_of.isoformat() if self.scored_as_of else None, "fit": self.fit,
                "latest_attempt": self.latest, "customers": self.customers, "rows": self.rows}

    def lines(self) -> list[str]:
        if self.fit is None:
            out = ["no lifetime-value scores yet (crm report clv --fit --as-of DATE)"]
        else:
            params = self.fit["params"]
            out = [f"scores as of {self.scored_as_of} for {self.customers} buyers; {_params_text(params)}"]
            if params.get("independence_doubtful"):
                out.append(f"  note: repeat purchase days and their value correlate "
                           f"({params['frequency_monetary_correlation']:.2f}); Gamma-Gamma assumes they do not")
        if self.latest is not None:
            out.append(f"latest fit {self.latest['as_of']}: {self.latest['status']}: {self.latest['detail']}")
        if self.rows:
            out.append(f"{'customer_id':<20} {'p_alive':>7} {'90 days':>8} {'365 days':>8} {'clv_12m':>14}")
            out += [f"{r['customer_id']:<20} {r['p_alive']:>7.3f} {r['purchases_90']:>8.2f} "
                    f"{r['purchases_365']:>8.2f} {r['clv_12m'] if r['clv_12m'] is not None else '':>14}"
                    for r in self.rows]
        return out


def _fit_dict(fit) -> dict | None:
    if fit is None:
        return None
    return {"as_of": fit.as_of.isoformat(), "status": fit.status, "params": fit.params, "customers": fit.customers,
            "repeat_customers": fit.repeat_customers, "detail": fit.detail, "seconds": fit.seconds}


def clv_report(engine: Engine, top: int = 20) -> ClvReport:
    """The ``top`` customers by 12-month CLV (ties by customer id), with the fit behind the scores."""
    c = CustomerClv
    with engine.connect() as conn:
        scored_as_of = conn.execute(select(c.as_of).limit(1)).scalar_one_or_none()
        customers = conn.execute(select(func.count()).select_from(c)).scalar_one()
        rows = conn.execute(
            select(c.customer_id, c.p_alive, c.purchases_90, c.purchases_365, c.clv_12m)
            .order_by(c.clv_12m.desc().nulls_last(), c.customer_id).limit(top)).all()
        fit = conn.execute(select(ClvFit).where(ClvFit.as_of == scored_as_of)).first() if scored_as_of else None
        latest = latest_fit(conn)
    latest_dict = _fit_dict(latest) if latest is not None and (fit is None or latest.as_of != fit.as_of) else None
    return ClvReport(scored_as_of, _fit_dict(fit), latest_dict, customers,
                     [{"customer_id": r.customer_id, "p_alive": r.p_alive, "purchases_90": r.purchases_90,
                       "purchases_365": r.purchases_365, "clv_12m": r.clv_12m} for r in rows])


# The page's histogram of the stored scores: one pass over customer_clv, a SUM(CASE) per bin of round width
# (the bins' edges from the highest score), on both dialects alike.
def clv_distribution(engine: Engine, bins: int = 10) -> list[dict]:
    """Scored customers per range of 12-month CLV ([low, high), the last range closed), and those without a
    CLV (no repeat purchase day to value) as a range with no bounds; empty before the first fit."""
    c = CustomerClv.clv_12m
    with engine.connect() as conn:
        lo, hi, n, unvalued = conn.execute(select(func.min(c), func.max(c), func.count(),
                                                  func.count().filter(c.is_(None)))
                                           .select_from(CustomerClv)).one()
        if not n:
            return []
        out = []
        if lo is not None:
            edges = nice_ticks(min(0.0, float(lo)), float(hi), bins)
            if len(edges) < 2:
                edges = [edges[0], edges[0] + 1]
            conds = [(c >= edges[i]) & ((c < edges[i + 1]) if i < len(edges) - 2 else (c <= edges[i + 1]))
                     for i in range(len(edges) - 1)]
            counts = conn.execute(select(*[func.sum(case((cond, 1), else_=0)) for cond in conds])
                                  .select_from(CustomerClv)).one()
            out = [{"low": edges[i], "high": edges[i + 1], "customers": int(counts[i] or 0)}
                   for i in range(len(edges) - 1)]
        if unvalued:
            out.append({"low": None, "high": None, "customers": int(unvalued)})
    return out
