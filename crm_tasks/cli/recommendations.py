"""Product recommendations: ``crm recommendations refresh|evaluate``."""

from __future__ import annotations

import click

from crm_tasks.cli.common import emit, json_output, parse_date, reported, settings, store


@click.group("recommendations")
def recommendations_group() -> None:
    """Cross-sell and up-sell recommendations from co-purchases: refresh them, and measure them offline."""


@recommendations_group.command("refresh")
@click.option("--as-of", "as_of", callback=parse_date, required=True,
              help="Orders up to the end of this day count (YYYY-MM-DD).")
@json_output
def refresh_command(as_of, as_json) -> None:
    """Recompute the co-purchase statistics and every customer's list as of a date (what crm_reports runs
    nightly); the previous lists are replaced.

    Example: crm recommendations refresh --as-of 2026-03-31 --json
    """
    from crm_tasks.analytics.recommendations import refresh_recommendations

    db = store(as_json)
    with reported(as_json):
        result = refresh_recommendations(db, settings(), as_of)
    kinds = ", ".join(f"{n} {k.replace('_', '-')}" for k, n in result.by_kind.items())
    emit(as_json, result.summary(), f"recommendations as of {as_of}: {result.pairs} product pairs from "
                                    f"{result.buyers} buyers; {result.customers} customers ({kinds}); "
                                    f"{result.short_lists} short lists ({result.seconds:.1f} s)")


@recommendations_group.command("evaluate")
@click.option("--holdout-days", type=click.IntRange(1, 365), default=30, show_default=True,
              help="Train on the orders before the last N days; score on what customers bought in them.")
@click.option("--as-of", "as_of", callback=parse_date,
              help="The holdout's last day (YYYY-MM-DD); default: the day of the latest order.")
@json_output
def evaluate_command(holdout_days, as_of, as_json) -> None:
    """Hit rate at 5 and recall at 10 of the recommender against the best sellers, on the products each
    customer bought after the cut that were new to them; the result is stored.

    Example: crm recommendations evaluate --holdout-days 30 --json
    """
    from crm_tasks.analytics.recommendations import evaluate

    db = store(as_json)
    with reported(as_json):
        result = evaluate(db, settings(), holdout_days, as_of)
    emit(as_json, result.to_dict(), "\n".join(result.lines()))
