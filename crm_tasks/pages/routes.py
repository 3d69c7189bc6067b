"""The CRM pages' routes: thin, each one call into ``crm_tasks.pages.data`` and one template.

Every route of the router carries the login dependency it is built with: Airflow's own
``requires_authenticated()``, which the plugin passes in (``crm_tasks`` never imports Airflow). Query strings hold only
dates, period names, campaign names and page numbers: never personal data. Responses are not cached
(``Cache-Control: no-store``): a page may name customer ids.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine

from crm_tasks.errors import ConfigError
from crm_tasks.pages import charts, data
from crm_tasks.settings import Settings

NO_STORE = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex", "Referrer-Policy": "no-referrer"}
PAGES = (("overview", "Overview"), ("segments", "Segments"), ("sales", "Sales"), ("campaigns", "Campaigns"),
         ("data-quality", "Data quality"))

_templates = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")),
                         autoescape=select_autoescape(default=True, default_for_string=True))


def _pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x * 100:.{digits}f} %"


def _num(x, digits: int = 0) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


_templates.filters.update(money=data.money, pct=_pct, num=_num)


def render(name: str, **context) -> HTMLResponse:
    html = _templates.get_template(name).render(pages=PAGES, **context)
    return HTMLResponse(html, headers=NO_STORE)


def sales_charts(page: data.SalesPage, currency: str) -> tuple[str, str]:
    """The revenue chart (with the forecast band, by day) and the orders chart, as SVG."""
    by_period = {r.period: r for r in page.rows}
    ahead = page.forecast_days
    labels = page.periods + [d["date"] for d in ahead]
    pad = [None] * len(ahead)
    revenue = [float(by_period[p].revenue) if p in by_period else 0.0 for p in page.periods] + pad
    series = [charts.Series("Revenue", revenue)]
    bands = []
    if ahead:
        before = [None] * len(page.periods)
        series.append(charts.Series("Forecast (mean)", before + [d["mean"] for d in ahead], dashed=True))
        bands = [charts.Band("95 % interval", before + [d["lower_95"] for d in ahead],
                             before + [d["upper_95"] for d in ahead], 0.12),
                 charts.Band("80 % interval", before + [d["lower_80"] for d in ahead],
                             before + [d["upper_80"] for d in ahead], 0.25)]
    unit = {"day": "Day", "week": "Week (Monday)", "month": "Month"}[page.by]
    revenue_chart = charts.render(charts.Chart(
        f"Net revenue by {page.by}", f"Net revenue per {page.by} from {labels[0]} to {labels[-1]}"
        + (" with the 90-day forecast and its 80 % and 95 % intervals" if ahead else "")
        + ". The numbers are in the table below.", labels, series, bands, unit, f"Net revenue ({currency})"))
    orders_chart = charts.render(charts.Chart(
        f"Orders by {page.by}", f"Orders per {page.by} from {page.periods[0]} to {page.periods[-1]}. "
        "The numbers are in the table below.", page.periods,
        [charts.Series("Orders", [by_period[p].orders if p in by_period else 0 for p in page.periods])],
        [], unit, "Orders", height=260))
    return revenue_chart, orders_chart


def segments_chart(page: data.SegmentsPage) -> str:
    """Each segment of the family's size per recompute day, one line each (a gap before it existed)."""
    days = page.days
    series = [charts.Series(name.split(":", 1)[-1], [per.get(d) for d in days])
              for name, per in sorted(page.sizes.items())]
    return charts.render(charts.Chart(
        f"Size of the {page.family} segments", f"Customers in each {page.family} segment at each recompute from "
        f"{days[0]} to {days[-1]}. The numbers are in the table below.", days, series, [], "Recompute day",
        "Customers"))


def page_router(login: Callable, engine: Callable[[], Engine], get_settings: Callable[[], Settings]) -> APIRouter:
    """The pages, each depending on ``login`` (a FastAPI dependency that refuses anyone not logged in);
    ``engine`` and ``get_settings`` are called per request (never at import: plugins load early)."""
    router = APIRouter(dependencies=[Depends(login)])

    def as_of_or_default(as_of: date | None) -> date:
        return as_of or data.default_as_of(engine(), get_settings())

    @router.get("/overview", response_class=HTMLResponse)
    def overview(as_of: date | None = None):
        day = as_of_or_default(as_of)
        return render("overview.html", page=data.overview(engine(), get_settings(), day), current="overview",
                      base_currency=get_settings().segments.base_currency)

    @router.get("/segments", response_class=HTMLResponse)
    def segments(as_of: date | None = None, since: date | None = None,
                 family: str = Query("rfm", pattern="^(" + "|".join(data.FAMILIES) + ")$")):
        day = as_of_or_default(as_of)
        if since is not None and since > day:
            raise HTTPException(400, f"since ({since}) is after the day shown ({day})")
        page = data.segments_page(engine(), day, family, since)
        return render("segments.html", page=page, current="segments",
                      chart=segments_chart(page) if page.days else "", families=data.FAMILIES)

    @router.get("/sales", response_class=HTMLResponse)
    def sales(as_of: date | None = None, by: str = Query("day", pattern="^(day|week|month)$")):
        day = as_of_or_default(as_of)
        try:
            page = data.sales_page(engine(), get_settings(), day, by)
        except ConfigError as exc:
            raise HTTPException(400, str(exc)) from exc
        revenue_chart, orders_chart = sales_charts(page, get_settings().segments.base_currency)
        return render("sales.html", page=page, current="sales", revenue_chart=revenue_chart,
                      orders_chart=orders_chart, base_currency=get_settings().segments.base_currency)

    @router.get("/data-quality", response_class=HTMLResponse)
    def data_quality(as_of: date | None = None, page: int = Query(1, ge=1, le=1_000_000)):
        day = as_of_or_default(as_of)
        return render("data_quality.html", page=data.data_quality(engine(), day, page), current="data-quality")

    @router.get("/campaigns", response_class=HTMLResponse)
    def campaigns(campaign: str | None = Query(None, max_length=64)):
        return render("campaigns.html", page=data.campaigns_page(engine(), campaign), current="campaigns",
                      base_currency=get_settings().segments.base_currency)

    return router
