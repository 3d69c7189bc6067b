"""The revenue forecast: ``crm report forecast`` (registered on the ``crm report`` group)."""

from __future__ import annotations

from pathlib import Path

import click

from crm_tasks.cli.common import emit, json_output, parse_date, reported, settings, store


@click.command("forecast")
@click.option("--fit", "refit", is_flag=True,
              help="Bring the sales cube up to --as-of and fit the forecast first (what crm_reports runs "
                   "nightly), then show it.")
@click.option("--as-of", "as_of", callback=parse_date,
              help="With --fit: purchases up to the end of this day (YYYY-MM-DD); else: show the fit of this day.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the days as CSV (cells never start a spreadsheet formula).")
@json_output
def report_forecast(refit, as_of, csv_path, as_json) -> None:
    """Daily revenue for the next 90 days with 80 % and 95 % intervals, the 7/30/90-day totals, and the
    backtest against seasonal naive (it says so when the forecast is not better).

    Example: crm report forecast --fit --as-of 2026-11-30 --json
    """
    from crm_tasks.analytics.forecast import forecast_report, forecast_revenue
    from crm_tasks.analytics.sales import refresh_sales

    if refit and as_of is None:
        raise click.UsageError("--fit needs --as-of DATE")
    db = store(as_json)
    cfg = settings()
    with reported(as_json):
        if refit:
            refresh_sales(db, cfg, as_of)  # the forecast reads the cube
        fitted = forecast_revenue(db, cfg, as_of) if refit else None
        report = forecast_report(db, cfg, as_of)
    if csv_path is not None:
        csv_path.write_text(report.csv(), encoding="utf-8")
    payload = report.to_dict() | ({"run": fitted.summary()} if fitted else {})
    lines = report.lines()
    if fitted:
        lines.append(f"  fitted in {fitted.seconds:.1f} s")
    emit(as_json, payload, "\n".join(lines))
