"""Template safety and the shipped templates: sandbox, strict variables, escaping, languages."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from crm_tasks.errors import RenderError
from crm_tasks.messages.render import Renderer, language_of, message_context, renderer_for
from crm_tasks.settings import load_settings

REPO_CFG = load_settings()


def context(lang: str = "en", first_name: str = "Asha", coupon: bool = True) -> dict:
    renderer = renderer_for(REPO_CFG)
    return message_context(
        REPO_CFG, campaign="birthday", lang=lang, locale=None, first_name=first_name, occasion_date=date(2027, 2, 28),
        years=3, years_as_customer=3, favourite_category="grocery", recommendations=[("GROCERY-1001", "grocery")],
        coupon={"code": "K7PX2M9QRT", "value": Decimal(500), "type": "amount", "currency": "INR",
                "expires_on": date(2027, 3, 14)} if coupon else None,
        unsubscribe_url="https://crm.example.com/unsubscribe/tok", labels=renderer.labels(lang, "category."))


@pytest.fixture
def folder(tmp_path):
    """A template folder of one's own, with an English catalog."""
    (tmp_path / "locales").mkdir()
    (tmp_path / "locales" / "en.yaml").write_text('hello: "Hello {name}"\n', encoding="utf-8")
    return tmp_path


def write_template(folder, subject="{{ t('hello', name=customer.first_name) }}",
                   html="<p>{{ customer.first_name }}</p>", text="{{ customer.first_name }}"):
    (folder / "x").mkdir(exist_ok=True)
    (folder / "x" / "subject.txt").write_text(subject, encoding="utf-8")
    (folder / "x" / "body.html").write_text(html, encoding="utf-8")
    (folder / "x" / "body.txt").write_text(text, encoding="utf-8")
    return Renderer(folder, ["en"])


@pytest.mark.parametrize("expression", [
    "''.__class__.__mro__",
    "''.__class__.__mro__[1].__subclasses__()",
    "customer.__class__.__init__.__globals__",
    "t.__globals__",
    "().__class__.__base__.__subclasses__()",
])
def test_sandbox_refuses_attribute_escapes(folder, expression):
    renderer = write_template(folder, html="{{ " + expression + " }}")
    with pytest.raises(RenderError, match="SecurityError|UndefinedError"):
        renderer.render("x", {"lang": "en", "customer": {"first_name": "A"}})


def test_a_missing_variable_is_an_error_not_an_empty_string(folder):
    renderer = write_template(folder, html="<p>{{ customer.last_name }}</p>")
    with pytest.raises(RenderError, match="last_name"):
        renderer.render("x", {"lang": "en", "customer": {"first_name": "A"}})
    renderer = write_template(folder, subject="{{ t('hello') }}")
    with pytest.raises(RenderError, match=r"uses \{name\}"):
        renderer.render("x", {"lang": "en", "customer": {"first_name": "A"}})
    renderer = write_template(folder, subject="{{ t('nope') }}")
    with pytest.raises(RenderError, match="no text for 'nope'"):
        renderer.render("x", {"lang": "en", "customer": {"first_name": "A"}})


def test_html_is_escaped_and_the_text_part_is_not(folder):
    renderer = write_template(folder)
    msg = renderer.render("x", {"lang": "en", "customer": {"first_name": "<script>alert(1)</script>"}})
    assert "<script>" not in msg.html and "&lt;script&gt;alert(1)&lt;/script&gt;" in msg.html
    assert msg.text == "<script>alert(1)</script>"


def test_subject_is_one_line_even_if_a_name_holds_a_newline(folder):
    renderer = write_template(folder)
    msg = renderer.render("x", {"lang": "en", "customer": {"first_name": "A\r\nBcc: evil@example.com"}})
    assert "\n" not in msg.subject and "\r" not in msg.subject


def test_missing_translation_falls_back_to_english(folder):
    (folder / "locales" / "hi.yaml").write_text("{}\n", encoding="utf-8")
    renderer = Renderer(folder, ["en", "hi"])
    write_template(folder)
    assert renderer.render("x", {"lang": "hi", "customer": {"first_name": "A"}}).subject == "Hello A"


def test_language_of_customer_locales():
    langs = ["en", "hi", "te", "fa", "ur"]
    assert [language_of(x, langs) for x in ("hi-IN", "te_IN", "fa-IR", "ur-PK", "de-DE", None, "EN-gb")] == \
        ["hi", "te", "fa", "ur", "en", "en", "en"]


@pytest.mark.parametrize("lang", ["en", "hi", "te", "fa", "ur"])
def test_shipped_templates_render_in_every_language(lang):
    renderer = renderer_for(REPO_CFG)
    ctx = context(lang, first_name="<b>Ravi</b>")
    for template in renderer.templates():
        msg = renderer.render(template, ctx)
        assert f'lang="{lang}"' in msg.html
        assert ('dir="rtl"' in msg.html) == (lang in ("fa", "ur"))
        assert "<b>Ravi" not in msg.html and "&lt;b&gt;Ravi" in msg.html
        assert ctx["unsubscribe_url"] in msg.html and ctx["unsubscribe_url"] in msg.text
        assert REPO_CFG.campaigns.sender.postal_address in msg.html
        assert "K7PX2M9QRT" in msg.html and "K7PX2M9QRT" in msg.text or template in ("birthday", "anniversary",
                                                                                       "thank_you")
        assert "style=" in msg.html  # styles are inlined on the elements
        assert "<" not in msg.text.replace("<b>Ravi</b>", "")  # the text part is plain text


def ui_folder(folder, macros: str, body: str):
    """A template folder whose x/body.html imports an _ui.html of its own."""
    (folder / "_ui.html").write_text(macros, encoding="utf-8")
    return write_template(folder, html='{% import "_ui.html" as ui %}' + body)


@pytest.mark.parametrize("expression", [
    "customer.update({'first_name': 'B'})",
    "customer.__class__",
    "ui.__dict__",
    "ui._body_stream",
    "ui.p.__call__.__globals__",
])
def test_sandbox_refuses_escapes_through_dicts_and_macro_modules(folder, expression):
    renderer = ui_folder(folder, "{% macro p(x) %}<p>{{ x }}</p>{% endmacro %}", "{{ " + expression + " }}")
    with pytest.raises(RenderError, match="SecurityError|UndefinedError|unsafe"):
        renderer.render("x", {"lang": "en", "dir": "ltr", "brand_color": "#000000", "customer": {"first_name": "A"}})


@pytest.mark.parametrize("lang, direction, align", [("en", "ltr", "left"), ("hi", "ltr", "left"),
                                                    ("fa", "rtl", "right"), ("ur", "rtl", "right")])
def test_macros_follow_the_language_direction_and_the_brand_colour(lang, direction, align):
    renderer = renderer_for(REPO_CFG)
    # Alternate languages and colours on one renderer: the macro modules it keeps must not mix them up.
    for brand in ("#123abc", "#0b6e4f", "#123abc"):
        for template in ("offer", "birthday"):
            msg = renderer.render(template, {**context(lang), "brand_color": brand})
            other = renderer.render(template, {**context("ur" if direction == "ltr" else "en"), "brand_color": "#fff"})
            assert f'<div role="article" aria-roledescription="email" aria-label="{msg.subject}" lang="{lang}" ' \
                f'dir="{direction}">' in msg.html
            assert '<h1 class="h1" style="margin:0 0 20px; font-family:' in msg.html
            heading = msg.html.split('<h1 class="h1" style="', 1)[1].split('"', 1)[0]
            assert heading.endswith(f"text-align:{align};")
            assert f'<td align="{align}" style="padding:12px 0;' in msg.html  # product list rows
            assert f'bgcolor="{brand}" style="padding:20px 32px; background-color:{brand};' in msg.html  # header
            assert f"border:2px dashed {brand};" in msg.html and f"letter-spacing:2px; color:{brand};" in msg.html
            assert "#fff;" not in msg.html.replace("#ffffff", "") and f"color:{brand}" not in other.html


def test_a_brand_colour_that_is_not_a_colour_is_not_used():
    renderer = renderer_for(REPO_CFG)
    for brand in ("red;}</style><script>x</script>", "#12345g", "#1234567", "", None, ["#123abc"]):
        html = renderer.render("offer", {**context("fa"), "brand_color": brand}).html
        assert "<script>" not in html and "red;" not in html and "#12345" not in html
        assert 'bgcolor="#0b6e4f" style="padding:20px 32px; background-color:#0b6e4f;' in html


def test_macro_modules_are_built_once_per_language_direction_and_colour():
    renderer = renderer_for(REPO_CFG)
    for lang in ("en", "fa", "en", "fa", "en"):
        renderer.render("offer", context(lang, first_name=lang))
    assert len(renderer.env.get_template("_ui.html")._layout_modules) == 2
    assert len(renderer.env.get_template("_ui.txt")._layout_modules) == 2


def test_a_macro_sees_no_customer_data_and_keeps_nothing_between_messages(folder):
    ctx = {"lang": "en", "dir": "ltr", "brand_color": "#000000", "customer": {"first_name": "Asha"}}
    for name in ("customer", "namespace", "cycler"):  # a module sees lang, dir, brand_color and t() only
        renderer = ui_folder(folder, "{% macro hi() %}{{ " + name + " }}{% endmacro %}", "{{ ui.hi() }}")
        with pytest.raises(RenderError, match=f"'{name}' is undefined"):
            renderer.render("x", ctx)
    # A module holding something that changes when used (an iterator) is built anew for every message.
    renderer = ui_folder(folder, '{% set numbers = [1, 2, 3]|map("string") %}'
                                 "{% macro first() %}{{ numbers|first }}{% endmacro %}", "{{ ui.first() }}")
    assert [renderer.render("x", ctx).html for _ in range(3)] == ["1", "1", "1"]
    assert not renderer.env.get_template("_ui.html").__dict__.get("_layout_modules")


def test_t_errors_inside_macros_and_loops(folder):
    (folder / "locales" / "en.yaml").write_text('hello: "Hello {name}"\nitem: "Item {sku}"\n', encoding="utf-8")
    renderer = ui_folder(folder, "{% macro items(xs) %}{% for x in xs %}{{ t('item', sku=x) }};{% endfor %}"
                                 "{{ t('hello') }}{% endmacro %}", "{{ ui.items(['a', 'b']) }}")
    with pytest.raises(RenderError, match=r"'hello' in en uses \{name\}"):
        renderer.render("x", {"lang": "en", "dir": "ltr", "brand_color": "#000000", "customer": {"first_name": "A"}})
    renderer = ui_folder(folder, "{% macro items(xs) %}{% for x in xs %}{{ t('item', sku=x) }};{% endfor %}"
                                 "{{ t('nope') }}{% endmacro %}", "{{ ui.items(['a', 'b']) }}")
    with pytest.raises(RenderError, match="no text for 'nope'"):
        renderer.render("x", {"lang": "hi", "dir": "ltr", "brand_color": "#000000", "customer": {"first_name": "A"}})


@pytest.mark.parametrize("html", [
    "{{ 'x' * 300000000 }}",  # 300 MB in one value
    "{{ 300000000 * ['x'] }}",
    "{{ 10 ** 100000000 }}",  # a number that takes minutes to compute
    "{% for i in range(100000) %}{% for j in range(100000) %}.{% endfor %}{% endfor %}",
])
def test_a_template_cannot_build_a_huge_value_or_loop_for_ever(folder, html):
    import resource
    import time

    renderer = write_template(folder, html=html)
    started, peak = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(RenderError, match="SecurityError.*at most"):
        renderer.render("x", {"lang": "en", "customer": {"first_name": "A"}})
    assert time.perf_counter() - started < 2  # refused before the work, not after
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100_000  # KiB: no 300 MB on the way


def test_a_message_larger_than_the_bound_is_refused(folder):
    renderer = write_template(folder, html="{% for i in range(900) %}{{ 'x' * 5000 }}{% endfor %}")
    with pytest.raises(RenderError, match="the message has 45000.. characters; at most 2000000"):
        renderer.render("x", {"lang": "en", "customer": {"first_name": "A"}})


def test_only_template_files_can_be_included(folder):
    (folder / "secret.key").write_text("k" * 40, encoding="utf-8")
    for target in ("locales/en.yaml", "secret.key", "../outside.html", "/etc/passwd"):
        renderer = write_template(folder, html="{% include '" + target + "' %}")
        with pytest.raises(RenderError, match="TemplateNotFound"):
            renderer.render("x", {"lang": "en", "customer": {"first_name": "A"}})


def test_a_campaign_names_a_template_folder_never_a_path(tmp_path):
    from crm_tasks.campaigns.definitions import parse_campaign
    from crm_tasks.errors import ConfigError
    from tests.conftest import REPO

    text = (REPO / "campaigns" / "birthday.yaml").read_text(encoding="utf-8")
    for bad in ("../../etc", "/etc/passwd", "birthday/../offer"):
        (tmp_path / "birthday.yaml").write_text(text.replace("template: birthday", f"template: '{bad}'"),
                                                encoding="utf-8")
        with pytest.raises(ConfigError, match="template: .*must be the name of a folder in templates/email/"):
            parse_campaign(tmp_path / "birthday.yaml", REPO_CFG)


@pytest.mark.parametrize("html", [
    "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}{% endfor %}{% endfor %}"
    "{% endfor %}",  # a billion iterations that build nothing
    "{% for a in 'x' * 1000000 %}{% for b in 'x' * 1000000 %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{% for i in range(1000) %}{{ f(n) if n else '' }}{% endfor %}{% endmacro %}{{ f(0) * 0 }}"
    "{% for a in range(1000) %}{% for b in range(1000) %}{{ f(0) }}{% endfor %}{% endfor %}",
])
def test_a_render_that_runs_too_long_is_stopped_and_the_renderer_goes_on(folder, html):
    import time

    renderer = write_template(folder, html=html)
    renderer.render_seconds = 0.3
    started = time.perf_counter()
    with pytest.raises(RenderError, match=r"template x \(en\): rendering one message took more than 0.3 s"):
        renderer.render("x", {"lang": "en", "customer": {"first_name": "A"}})
    assert time.perf_counter() - started < 1.5
    # Nothing left behind: the next messages render, and none is interrupted late.
    fine = write_template(folder, html="<p>{{ customer.first_name }}</p>")
    fine.render_seconds = 0.3
    for _ in range(2000):
        assert fine.render("x", {"lang": "en", "customer": {"first_name": "B"}}).html == "<p>B</p>"
    time.sleep(0.4)
    assert fine.render("x", {"lang": "en", "customer": {"first_name": "C"}}).html == "<p>C</p>"
