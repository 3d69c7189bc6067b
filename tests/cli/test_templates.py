"""crm templates check: every shipped template renders in every language with sample customers and products,
and a marketing e-mail without a link besides unsubscribe fails, naming the template file and the language."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from click.testing import CliRunner

from crm_tasks.cli import main
from crm_tasks.settings import settings
from tests.conftest import REPO

LANGUAGES = {"en", "hi", "te", "fa", "ur"}


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """Copies of the shipped templates and campaigns, which the process-wide settings use."""
    templates, campaigns = tmp_path / "email", tmp_path / "campaigns"
    shutil.copytree(REPO / "templates" / "email", templates)
    shutil.copytree(REPO / "campaigns", campaigns)
    monkeypatch.setenv("CRM_TEMPLATES_DIR", str(templates))
    monkeypatch.setenv("CRM_CAMPAIGNS_DIR", str(campaigns))
    settings.cache_clear()
    yield templates, campaigns
    settings.cache_clear()


def check(*args):
    return CliRunner().invoke(main, ["templates", "check", *args])


def without_call_to_action(path) -> None:
    """The template part with no shop button and no products: only the unsubscribe link is left."""
    source = path.read_text(encoding="utf-8")
    source = re.sub(r"\{\{ ui\.(button|cta)\(shop_url, .*\) \}\}\n", "", source)
    path.write_text(source.replace("{{ ui.product_list(customer.recommendations) }}", ""), encoding="utf-8")


def test_the_shipped_templates_pass_in_every_language(folders):
    done = check("--json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["errors"] == [] and result["transactional"] == []
    assert set(result["languages"]) == LANGUAGES
    assert set(result["templates"]) == {"anniversary", "birthday", "offer", "thank_you", "warranty_reminder",
                                        "win_back"}
    assert result["rendered"] == 6 * 5 * 4  # templates x languages x sample customers
    human = check()
    assert human.exit_code == 0 and "120 messages rendered from 6 templates in 5 languages" in human.output


def test_a_marketing_template_with_no_link_besides_unsubscribe_fails_naming_the_file_and_language(folders):
    templates, _ = folders
    without_call_to_action(templates / "offer" / "body.html")
    without_call_to_action(templates / "thank_you" / "body.txt")
    done = check("--json")
    assert done.exit_code == 1
    errors = json.loads(done.stdout)["errors"]
    html = [e for e in errors if f"{templates / 'offer' / 'body.html'} (" in e]
    text = [e for e in errors if f"{templates / 'thank_you' / 'body.txt'} (" in e]
    assert {re.search(r"\((\w\w)\)", e).group(1) for e in html} == LANGUAGES
    assert {re.search(r"\((\w\w)\)", e).group(1) for e in text} == LANGUAGES
    assert all("no link besides unsubscribe" in e for e in html + text)
    assert len(errors) == len(html) + len(text)  # the other templates, and the parts left alone, still pass
    human = check()
    assert human.exit_code == 1
    assert f"error: sample 1: {templates / 'offer' / 'body.html'} (en): a marketing e-mail has no link" in human.output


def test_a_template_only_transactional_campaigns_use_may_go_without_a_call_to_action(folders):
    templates, campaigns = folders
    without_call_to_action(templates / "offer" / "body.html")
    at_risk = campaigns / "at_risk_offer.yaml"  # the only campaign that uses the offer template
    at_risk.write_text(at_risk.read_text(encoding="utf-8") + "global_control: false\n", encoding="utf-8")
    done = check("--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["transactional"] == ["offer"]
    # Once a marketing campaign uses it too, it is a marketing template again.
    (campaigns / "offer_copy.yaml").write_text(
        at_risk.read_text(encoding="utf-8").replace("name: at_risk_offer", "name: offer_copy")
        .replace("global_control: false\n", ""), encoding="utf-8")
    assert check().exit_code == 1


def test_a_template_that_does_not_render_fails(folders):
    templates, _ = folders
    (templates / "_ui.txt").write_text((templates / "_ui.txt").read_text(encoding="utf-8")
                                       .replace("{{ item.price }}", "{{ item.cost }}"), encoding="utf-8")
    done = check("--json")
    assert done.exit_code == 1
    assert any("template birthday (hi): UndefinedError" in e and "cost" in e for e in json.loads(done.stdout)["errors"])


def test_the_command_has_help_with_an_example():
    done = CliRunner().invoke(main, ["templates", "check", "--help"])
    assert done.exit_code == 0 and "Example: crm templates check" in done.output


def test_the_check_renders_a_targeted_coupon_and_names_a_broken_translation_of_it(folders):
    templates, _ = folders
    assert check().exit_code == 0
    fa = templates / "locales" / "fa.yaml"
    # A translator's typo in the placeholder of the sentence only targeted coupons show.
    fa.write_text(fa.read_text(encoding="utf-8").replace("{product}", "{prodcut}"), encoding="utf-8")
    result = check()
    assert result.exit_code != 0
    assert "'common.coupon_valid_on_product' in fa uses {prodcut}" in result.output
