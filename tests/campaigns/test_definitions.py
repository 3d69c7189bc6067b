"""Campaign definitions: every shipped file loads, and a broken file names the file, the field and the fix."""

from __future__ import annotations

import shutil

import pytest

from crm_tasks.campaigns.definitions import get_campaign, load_campaigns, parse_campaign
from crm_tasks.errors import ConfigError
from crm_tasks.settings import load_settings
from tests.conftest import REPO

CFG = load_settings()


def _birthday(tmp_path, **changes) -> str:
    """The shipped birthday file with lines replaced, written to tmp_path; returns its path."""
    text = (REPO / "campaigns" / "birthday.yaml").read_text(encoding="utf-8")
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "birthday.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_shipped_campaign_loads():
    campaigns, problems = load_campaigns(CFG)
    assert problems == []
    assert {c.name for c in campaigns} == {p.stem for p in (REPO / "campaigns").glob("*.yaml")}


@pytest.mark.parametrize("old,new,message", [
    ("  offset_days: 0", "  ofset_days: 0", "trigger.ofset_days: unknown field; did you mean 'offset_days'?"),
    ("  field: birthday", "  field: birthdate", "trigger.field: 'birthdate' is not a date field; did you mean 'birthday'?"),
    ("template: birthday", "template: birthdy", "template: 'birthdy' needs subject.txt, body.html, body.txt"),
    ("name: birthday", "name: bday", "name 'bday' must match the file name"),
    ("template: birthday", "template: birthday\nvariants: [{name: only}]",
     "variants: an A/B test needs at least two variants"),
    ("template: birthday", "template: birthday\nvariants: [{name: a}, {name: a}]", "variants: names must differ"),
    ("template: birthday", "template: birthday\nvariants: [{name: a}, {name: b, template: nope}]",
     "variants.b.template: 'nope' needs subject.txt"),
    ("template: birthday", "template: birthday\nvariants: [{name: a}, {name: b, wieght: 2}]",
     "variants.1.wieght: unknown field; did you mean 'weight'?"),
    ("template: birthday", "template: birthday\nattribution_days: 0", "attribution_days: Input should be greater"),
])
def test_a_broken_file_names_the_file_the_field_and_the_fix(tmp_path, old, new, message):
    with pytest.raises(ConfigError) as err:
        parse_campaign(_birthday(tmp_path, **{old: new}), CFG)
    assert str(err.value).startswith("birthday.yaml: ")
    assert message in str(err.value)


def test_a_broken_file_is_a_problem_and_the_others_still_load(tmp_path):
    shutil.copy(REPO / "campaigns" / "at_risk_offer.yaml", tmp_path)
    (tmp_path / "broken.yaml").write_text("name: broken\nkind: [not a kind\n", encoding="utf-8")
    campaigns, problems = load_campaigns(CFG, tmp_path)
    assert [c.name for c in campaigns] == ["at_risk_offer"]
    assert [(p.file, "not valid YAML" in p.message) for p in problems] == [("broken.yaml", True)]


def test_an_unknown_campaign_name_suggests_the_nearest():
    with pytest.raises(ConfigError, match="no campaign 'birthdy'.*Did you mean 'birthday'"):
        get_campaign(CFG, "birthdy")
