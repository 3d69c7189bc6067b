"""Offline evaluation (``crm recommendations evaluate``) on SQLite and PostgreSQL: hit rate at 5 and recall at
10 of the model and of the best sellers equal an independent computation, are stored, replace an earlier
evaluation of the same date, and come out of the CLI as one JSON object."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from crm_tasks.analytics.recommendations import evaluate, latest_purchase_day
from crm_tasks.cli import main
from crm_tasks.errors import CrmError
from crm_tasks.store.models import RecommendationEvaluation
from tests.recommendations.data import generate, reference_evaluation
from tests.recommendations.test_recommendations import AS_OF


def test_the_scores_equal_an_independent_computation_and_are_stored(engine, cfg):
    shop = generate(engine, AS_OF)
    as_of = latest_purchase_day(engine, cfg)
    got = evaluate(engine, cfg, 30)
    want = reference_evaluation(engine, cfg.recommendations, cfg.timezone, as_of, as_of - timedelta(days=30),
                                shop.customers)
    assert got.as_of == as_of and got.cut == as_of - timedelta(days=30)
    assert got.customers == want["customers"] > 20
    for name in ("model", "popularity"):
        assert getattr(got, name) == pytest.approx(want[name], abs=1e-6)
    evaluate(engine, cfg, 30)  # again: replaced, not added
    evaluate(engine, cfg, 14)
    with engine.connect() as conn:
        rows = conn.execute(select(RecommendationEvaluation.holdout_days, RecommendationEvaluation.customers,
                                   RecommendationEvaluation.model_hit_rate_at_5)
                            .order_by(RecommendationEvaluation.holdout_days)).all()
    assert [r[0] for r in rows] == [14, 30]
    assert rows[1][1:] == (got.customers, got.model["hit_rate_at_5"])


def test_without_purchases_there_is_nothing_to_evaluate(engine, cfg):
    with pytest.raises(CrmError, match="no purchases"):
        evaluate(engine, cfg, 30)


def test_the_command_prints_the_table_and_one_json_object(use_settings, engine):
    generate(engine, AS_OF)
    out = CliRunner().invoke(main, ["recommendations", "evaluate", "--holdout-days", "30", "--json"])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.output)
    assert set(payload["model"]) == set(payload["popularity"]) == {"hit_rate_at_5", "recall_at_10"}
    assert payload["holdout_days"] == 30 and payload["customers"] > 0
    human = CliRunner().invoke(main, ["recommendations", "evaluate", "--holdout-days", "30"])
    assert human.exit_code == 0 and "hit rate@5" in human.output and "popularity" in human.output
    refreshed = CliRunner().invoke(main, ["recommendations", "refresh", "--as-of", AS_OF.isoformat(), "--json"])
    assert refreshed.exit_code == 0 and json.loads(refreshed.output)["customers"] > 0
