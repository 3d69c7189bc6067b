"""Customer lifetime value: ``crm report clv`` (registered on the ``crm report`` group)."""

from __future__ import annotations

import click

from crm_tasks.cli.common import emit, json_output, parse_date, reported, settings, store


@click.command("clv")
@click.option("--top", type=click.IntRange(1, 100_000), default=20, show_default=True,
              help="How many customers, highest 12-month CLV first.")
@click.option("--fit", "refit", is_flag=True,
              help="Fit the models as of --as-of first (what crm_reports runs nightly), then show the scores.")
@click.option("--as-of", "as_of", callback=parse_date,
              help="With --fit: purchases up to the end of this day count (YYYY-MM-DD).")
@json_output
def report_clv(top, refit, as_of, as_json) -> None:
    """Customer lifetime value: P(alive), expected purchase days in 90 and 365 days and the 12-month CLV of
    the most valuable customers, with the BG/NBD and Gamma-Gamma fit behind them.

    Example: crm report clv --fit --as-of 2026-03-31 --top 10 --json
    """
    from crm_tasks.analytics.clv import fit_clv
    from crm_tasks.analytics.figures import Figures

    if refit and as_of is None:
        raise click.UsageError("--fit needs --as-of DATE")
    if as_of is not None and not refit:
        raise click.UsageError("--as-of goes with --fit (the stored scores are those of the latest fit)")
    db = store(as_json)
    with reported(as_json):
        fitted = fit_clv(db, settings(), as_of) if refit else None
        report = Figures(db, settings()).clv(top)  # the night's stored report when it is current
    payload = report.to_dict() | ({"run": fitted.summary()} if fitted else {})
    lines = report.lines()
    if fitted:
        lines.insert(0, f"fit as of {as_of}: {fitted.status} on {fitted.customers} buyers "
                        f"({fitted.repeat_customers} repeat) in {fitted.seconds:.1f} s"
                        + (f": {fitted.detail}" if fitted.detail else ""))
    emit(as_json, payload, "\n".join(lines))
    if fitted is not None and fitted.status == "failed":
        raise SystemExit(1)  # not_enough_data is a state of the data, not an error
