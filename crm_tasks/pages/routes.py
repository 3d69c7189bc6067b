"""The CRM pages' routes: thin, each one call into ``crm_tasks.pages.data`` (or ``.customers``) and one template.

Every route of the router carries the login dependency it is built with: Airflow's own
``requires_authenticated()``, which the plugin passes in (``crm_tasks`` never imports Airflow). The customer
pages, a segment's member list and its CSV export also need the Admin or Op role, erase and restore the
Admin role (``crm_tasks.pages.access``); each view, export, erase and restore writes one audit row. Query
strings hold only dates, period, campaign, category, store and segment names, opaque customer ids and page
numbers: never an e-mail address or a phone (the customer search is a POST). Responses are not cached
(``Cache-Control: no-store``): a page may name customer ids.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, StreamingResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine

from crm_tasks.errors import ConfigError, RestoreRefused
from crm_tasks.pages import access, charts, customers, data
from crm_tasks.pages.access import page_user
from crm_tasks.settings import Settings

NO_STORE = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex", "Referrer-Policy": "no-referrer"}
PAGES = (("overview", "Overview"), ("segments", "Segments"), ("sales", "Sales"), ("campaigns", "Campaigns"),
         ("customers", "Customers"), ("data-quality", "Data quality"))
CustomerId = PathParam(min_length=1, max_length=64)

_templates = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")),
                         autoescape=select_autoescape(default=True, default_for_string=True))


def _pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x * 100:.{digits}f} %"


def _num(x, digits: int = 0) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


_templates.filters.update(money=data.money, pct=_pct, num=_num)


def render(name: str, status_code: int = 200, root: str = "", **context) -> HTMLResponse:
    """A template as a response; ``root`` leads back from the page's path to the app's (``../`` per level),
    so that links stay relative and survive a sub-path deployment."""
    html = _templates.get_template(name).render(pages=PAGES, root=root, **context)
    return HTMLResponse(html, status_code=status_code, headers=NO_STORE)


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
    only = "".join(f", {k} {v}" for k, v in page.filters.items())
    revenue_chart = charts.render(charts.Chart(
        f"Net revenue by {page.by}{only}", f"Net revenue{only} per {page.by} from {labels[0]} to {labels[-1]}"
        + (" with the 90-day forecast and its 80 % and 95 % intervals" if ahead else "")
        + ". The numbers are in the table below.", labels, series, bands, unit, f"Net revenue ({currency})"))
    orders_chart = charts.render(charts.Chart(
        f"Orders by {page.by}{only}", f"Orders{only} per {page.by} from {page.periods[0]} to {page.periods[-1]}. "
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


def page_router(login: Callable, who: Callable, engine: Callable[[], Engine],
                get_settings: Callable[[], Settings], airflow_runs: Callable[[], dict] | None = None) -> APIRouter:
    """The pages, each depending on ``login`` (a FastAPI dependency that refuses anyone not logged in);
    ``who`` is a dependency giving the logged-in ``PageUser`` (name, roles); ``engine`` and ``get_settings``
    are called per request (never at import: plugins load early); ``airflow_runs`` reads Airflow's own runs
    for the overview (the plugin's, which can reach Airflow's metadata)."""
    router = APIRouter(dependencies=[Depends(login)])
    staff, admin = access.requires(who, "staff"), access.requires(who, "admin")

    def as_of_or_default(as_of: date | None) -> date:
        return as_of or data.default_as_of(engine(), get_settings())

    @router.get("/overview", response_class=HTMLResponse)
    def overview(as_of: date | None = None):
        day = as_of_or_default(as_of)
        return render("overview.html", page=data.overview(engine(), get_settings(), day, airflow_runs),
                      current="overview",
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
    def sales(as_of: date | None = None, by: str = Query("day", pattern="^(day|week|month)$"),
              category: str | None = Query(None, max_length=64), store: str | None = Query(None, max_length=64),
              segment: str | None = Query(None, max_length=64), buyers: bool = False):
        day = as_of_or_default(as_of)
        try:
            page = data.sales_page(engine(), get_settings(), day, by, category=category or None,
                                   store=store or None, segment=segment or None, count_buyers=buyers)
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

    customer_routes(router, staff, admin, engine, get_settings)
    segment_member_routes(router, staff, engine)
    return router


def customer_routes(router: APIRouter, staff: Callable, admin: Callable, engine: Callable[[], Engine],
                    get_settings: Callable[[], Settings]) -> None:
    """Search (a POST: no address or phone in a URL), a customer's record by its opaque id, and the erase and
    restore actions behind a confirmation form (``crm_tasks.pages.access`` on CSRF)."""
    for_staff, for_admin = [Depends(staff)], [Depends(admin)]

    @router.get("/customers", response_class=HTMLResponse, dependencies=for_staff)
    def customer_search_form():
        return render("customers.html", current="customers", q=None, matches=None, more=False)

    @router.post("/customers", response_class=HTMLResponse, dependencies=for_staff)
    def customer_search(q: str = Form(..., max_length=254)):
        # Only ids and whether each is current or archived are shown: nothing of a record, so no audit row.
        matches, more = customers.search(engine(), q)
        return render("customers.html", current="customers", q=q, matches=matches, more=more)

    @router.get("/customers/{customer_id}", response_class=HTMLResponse, dependencies=for_staff)
    def customer_record(request: Request, customer_id: str = CustomerId, page: int = Query(1, ge=1, le=1_000_000)):
        rec = customers.record(engine(), get_settings(), customer_id, page)
        if not rec.known:
            raise HTTPException(404, "no customer, archived profile, purchase or message under this id")
        user = page_user(request)
        access.audit(engine(), user, customer_id, "view")
        return render("customer.html", current="customers", root="../", rec=rec, user=user,
                      base_currency=get_settings().segments.base_currency)

    @router.get("/customers/{customer_id}/purchases.csv", dependencies=for_staff)
    def customer_purchases_csv(request: Request, customer_id: str = CustomerId):
        access.audit(engine(), page_user(request), customer_id, "export")
        return StreamingResponse(customers.purchases_csv(engine(), customer_id), media_type="text/csv; charset=utf-8",
                                 headers={**NO_STORE, "Content-Disposition": 'attachment; filename="purchases.csv"'})

    def confirm(request: Request, action: str, customer_id: str):
        token = access.form_token(engine(), get_settings(), request, action, customer_id)
        return render("confirm.html", current="customers", root="../../", action=action,
                      customer_id=customer_id, token=token, user=page_user(request))

    @router.get("/customers/{customer_id}/erase", response_class=HTMLResponse, dependencies=for_admin)
    def erase_form(request: Request, customer_id: str = CustomerId):
        return confirm(request, "erase", customer_id)

    @router.post("/customers/{customer_id}/erase", response_class=HTMLResponse, dependencies=for_admin)
    def erase_customer(request: Request, customer_id: str = CustomerId, token: str = Form(..., max_length=200)):
        from crm_tasks.cleanup.erasure import erase

        access.check_form(engine(), get_settings(), request, "erase", customer_id, token)
        # Audited before it runs: an erasure that fails half-way was still asked for, by this user.
        access.audit(engine(), page_user(request), customer_id, "erase")
        result = erase(engine(), get_settings(), customer_id=customer_id)
        return render("done.html", current="customers", root="../../", action="erase", customer_id=customer_id,
                      erased=result, restored=None)

    @router.get("/customers/{customer_id}/restore", response_class=HTMLResponse, dependencies=for_admin)
    def restore_form(request: Request, customer_id: str = CustomerId):
        return confirm(request, "restore", customer_id)

    @router.post("/customers/{customer_id}/restore", response_class=HTMLResponse, dependencies=for_admin)
    def restore_customer(request: Request, customer_id: str = CustomerId, token: str = Form(..., max_length=200)):
        from crm_tasks.cleanup.restore import restore

        access.check_form(engine(), get_settings(), request, "restore", customer_id, token)
        access.audit(engine(), page_user(request), customer_id, "restore")
        try:
            result = restore(engine(), get_settings(), customer_id)
        except RestoreRefused as exc:
            return render("done.html", status_code=409, current="customers", root="../../", action="restore",
                          customer_id=customer_id, erased=None, restored=None, refused=str(exc))
        return render("done.html", current="customers", root="../../", action="restore", customer_id=customer_id,
                      erased=None, restored=result)


def segment_member_routes(router: APIRouter, staff: Callable, engine: Callable[[], Engine]) -> None:
    """A segment's current members (ids, paged, searchable by id) and their CSV export with profiles."""
    name = Query(..., min_length=1, max_length=64)
    for_staff = [Depends(staff)]

    @router.get("/segments/members", response_class=HTMLResponse, dependencies=for_staff)
    def segment_members(segment: str = name, start: str | None = Query(None, max_length=64),
                        page: int = Query(1, ge=1, le=1_000_000)):
        members = data.segment_members(engine(), segment, start or None, page)
        if members is None:
            raise HTTPException(404, "no such segment (crm segments list names them)")
        return render("members.html", current="segments", root="../", members=members)

    @router.get("/segments/members.csv", dependencies=for_staff)
    def segment_export(request: Request, segment: str = name):
        size = data.export_size(engine(), segment)
        if size is None:
            raise HTTPException(404, "no such segment (crm segments list names them)")
        if size > data.EXPORT_MAX_ROWS:
            raise HTTPException(413, f"{segment} has {size:,} members, more than an export holds "
                                     f"({data.EXPORT_MAX_ROWS:,}): export a narrower segment")
        # One audit row per export, naming the segment where the customer id goes: the members it held are
        # the segment's at that moment (segment_memberships keeps who was in it when).
        access.audit(engine(), page_user(request), f"segment:{segment}"[:64], "export")
        filename = "".join(ch if ch.isalnum() else "_" for ch in segment)
        return StreamingResponse(data.export_rows(engine(), segment), media_type="text/csv; charset=utf-8",
                                 headers={**NO_STORE, "Content-Disposition": f'attachment; filename="{filename}.csv"'})
