"""Template safety and the shipped templates: sandbox, strict variables, escaping, languages."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal

import pytest

from crm_tasks.errors import RenderError
from crm_tasks.messages.preview import SAMPLE_PRODUCTS
from crm_tasks.messages.render import Renderer, language_of, message_context, renderer_for
from crm_tasks.settings import load_settings

REPO_CFG = load_settings()


def context(lang: str = "en", first_name: str = "Asha", coupon: bool = True) -> dict:
    renderer = renderer_for(REPO_CFG)
    return message_context(
        REPO_CFG, campaign="birthday", lang=lang, locale=None, first_name=first_name, occasion_date=date(2027, 2, 28),
        years=3, years_as_customer=3, favourite_category="grocery", recommendations=SAMPLE_PRODUCTS,
        coupon={"code": "K7PX2M9QRT", "value": Decimal(500), "type": "amount", "currency": "INR",
                "expires_on": date(2027, 3, 14)} if coupon else None,
        unsubscribe_url="https://crm.example.com/unsubscribe/tok", labels=renderer.labels(lang, "category."),
        texts=renderer.labels(lang, "product."))


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
        # The text part is plain text (the names are the customer's and the catalogue's, as written).
        assert "<" not in msg.text.replace("<b>Ravi</b>", "").replace("<b>Noise-cancelling</b>", "")


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


def own_renderer() -> Renderer:
    """A renderer of the shipped templates of its own (renderer_for's is shared by the whole process)."""
    return Renderer(REPO_CFG.campaigns.templates, REPO_CFG.campaigns.locales, shop_url=REPO_CFG.campaigns.shop_url)


def test_macro_modules_are_built_once_per_language_direction_and_colour():
    renderer = own_renderer()
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


MACRO_CALLS = (
    "{% macro p(x, y='d') %}<p>{{ x }}|{{ y }}</p>{% endmacro %}"
    "{% macro v(x) %}[{{ x }}{{ varargs|join(',') }}{{ kwargs|dictsort|join(';') }}]{% endmacro %}"
    "{% macro c(x) %}<i>{{ caller(x) }}</i>{% endmacro %}"
    "{% macro outer(x) %}{{ p(x, '<o>') }}{% endmacro %}"
)


@pytest.mark.parametrize("call", [
    "{{ ui.p('<a>', '<b>') }}", "{{ ui.p('<a>') }}", "{{ ui.p('<a>', y='<k>') }}", "{{ ui.p(x='<a>') }}",
    "{{ ui.v('<a>') }}", "{{ ui.v('<a>', 1, 2) }}", "{{ ui.v('<a>', k='<k>') }}", "{{ ui.outer('<a>') }}",
    "{% call(y) ui.c('<a>') %}{{ y }}<u>{% endcall %}", "{% for i in [1, 2] %}{{ ui.p(i, loop.index) }}{% endfor %}",
    "{% set b %}{{ ui.p('<a>', '<s>') }}{% endset %}{{ b }}", "{{ ui.p('<a>', '<b>')|upper }}",
])
def test_every_kind_of_macro_call_renders_as_jinjas_own_sandbox_renders_it(folder, call):
    """The renderer calls a macro given its positional arguments only without Jinja's argument matching
    (_EmailEnvironment.call); defaults, keywords, varargs, caller blocks and loops must come out the same,
    escaped the same, in HTML and in text."""
    from jinja2 import FileSystemLoader, StrictUndefined, select_autoescape
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    ui_folder(folder, MACRO_CALLS, call)
    (folder / "x" / "body.txt").write_text('{% import "_ui.html" as ui %}' + call, encoding="utf-8")
    renderer = Renderer(folder, ["en"])
    ctx = {"lang": "en", "dir": "ltr", "brand_color": "#000000", "customer": {"first_name": "A"}}
    reference = ImmutableSandboxedEnvironment(
        loader=FileSystemLoader(str(folder)), undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False))
    for part, got in (("body.html", renderer.render("x", ctx).html), ("body.txt", renderer.render("x", ctx).text)):
        expected = reference.get_template(f"x/{part}").render({**ctx, "subject": "A"})
        assert got == expected and got.lower().startswith(("<p>", "[", "<i>")), (part, got, expected)


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
    # Left alone, each of these runs for minutes; stopped, within seconds even on a busy machine.
    assert time.perf_counter() - started < 5
    # Nothing left behind: the next messages render, and none is interrupted late.
    fine = write_template(folder, html="<p>{{ customer.first_name }}</p>")
    fine.render_seconds = 0.3
    for _ in range(2000):
        assert fine.render("x", {"lang": "en", "customer": {"first_name": "B"}}).html == "<p>B</p>"
    time.sleep(0.4)
    assert fine.render("x", {"lang": "en", "customer": {"first_name": "C"}}).html == "<p>C</p>"


# --- product blocks and the call to action -------------------------------------------------------------------

SHOP_UTM = "utm_source=crm&utm_medium=email&utm_campaign=birthday&utm_content=birthday"


@pytest.mark.parametrize("lang", ["en", "hi", "te", "fa", "ur"])
def test_every_shipped_template_shows_each_product_and_a_call_to_action_with_utm_links(lang):
    from markupsafe import escape

    renderer = renderer_for(REPO_CFG)
    ctx = context(lang)
    products = ctx["customer"]["recommendations"]
    assert len(products) == 3 and all(SHOP_UTM in p["url"] for p in products)
    assert ctx["shop_url"] == f"https://shop.example.com/?{SHOP_UTM}"
    for template in renderer.templates():
        msg = renderer.render(template, ctx)
        for sample, shown in zip(SAMPLE_PRODUCTS, products, strict=True):
            name = sample.names.get(lang) or sample.name
            assert shown["name"] == name
            # HTML: the image with the name as its alt text, the name, price and reason, and the link.
            assert f'<img src="{sample.image_url}" width="96" height="96" alt="{escape(name)}"' in msg.html
            assert f'href="{escape(shown["url"])}"' in msg.html
            for value in (name, shown["price"], shown["reason"], shown["category"]):
                assert str(escape(value)) in msg.html, (template, value)
                assert value in msg.text, (template, value)
            assert shown["url"] in msg.text
        assert f'href="{escape(ctx["shop_url"])}"' in msg.html and ctx["shop_url"] in msg.text
        assert ("<b>Noise" not in msg.html) and ("&lt;b&gt;Noise" in msg.html or lang == "hi")
        assert ('dir="rtl"' in msg.html) == (lang in ("fa", "ur"))


def test_prices_and_reasons_follow_the_customers_language_and_locale():
    en = context("en")["customer"]["recommendations"]
    assert [p["price"] for p in en] == ["₹189.00", "₹12,999.50", "$24.90"]
    assert [p["reason"] for p in en] == ["Bought with Basmati Rice 5 kg by 42 customers",
                                         "A step up from Earbuds, bought by 1 customer",
                                         "A best seller, bought by 1,250 customers"]
    assert [p["category"] for p in en] == ["Grocery", "Electronics", "Home"]
    hi = context("hi")["customer"]["recommendations"]
    assert hi[0]["reason"] == "42 ग्राहकों ने इसे Basmati Rice 5 kg के साथ खरीदा" and hi[0]["category"] == "किराना"
    assert hi[0]["name"] == "तूर दाल 1 किलो" and hi[2]["name"] == "Cotton bedsheet"  # no Hindi name: the default
    renderer = renderer_for(REPO_CFG)
    for lang in ("hi", "te", "fa", "ur"):  # every reason is translated, not the English fallback
        texts, english = renderer.labels(lang, "product."), renderer.labels("en", "product.")
        assert set(texts) == set(english) and all(texts[k] != english[k] for k in texts), lang
    # en-IN groups lakhs: the customer's locale formats, the template language words.
    indian = message_context(
        REPO_CFG, campaign="offer", lang="en", locale="en-IN", first_name="A", occasion_date=date(2027, 2, 28),
        years=None, years_as_customer=0, favourite_category=None, recommendations=SAMPLE_PRODUCTS[1:2], coupon=None,
        unsubscribe_url="https://crm.example.com/unsubscribe/tok", labels={}, texts=renderer.labels("en", "product."))
    assert indian["customer"]["recommendations"][0]["price"] == "₹12,999.50"
    big = message_context(
        REPO_CFG, campaign="offer", lang="en", locale="en-IN", first_name="A", occasion_date=date(2027, 2, 28),
        years=None, years_as_customer=0, favourite_category=None, coupon=None, labels={},
        recommendations=[replace(SAMPLE_PRODUCTS[0], price=Decimal(149999))],
        unsubscribe_url="https://crm.example.com/unsubscribe/tok", texts=renderer.labels("en", "product."))
    assert big["customer"]["recommendations"][0]["price"] == "₹1,49,999.00"


def test_the_variant_is_the_utm_content_and_a_coupons_landing_page_is_the_call_to_action():
    renderer = renderer_for(REPO_CFG)
    ctx = message_context(
        REPO_CFG, campaign="at_risk_offer", lang="en", locale=None, first_name="A", occasion_date=date(2027, 2, 28),
        years=None, years_as_customer=0, favourite_category=None, recommendations=SAMPLE_PRODUCTS,
        coupon={"code": "K7PX2M9QRT", "value": Decimal(20), "type": "percent", "currency": None,
                "expires_on": date(2027, 3, 14), "landing_url": "https://shop.example.com/sale?tier=gold"},
        unsubscribe_url="https://crm.example.com/unsubscribe/tok", labels={}, texts=renderer.labels("en", "product."),
        variant="short_subject")
    utm = "utm_source=crm&utm_medium=email&utm_campaign=at_risk_offer&utm_content=short_subject"
    assert ctx["shop_url"] == f"https://shop.example.com/sale?tier=gold&{utm}"
    assert all(p["url"].split("#")[0].endswith(utm) for p in ctx["customer"]["recommendations"])
    html = renderer.render("offer", ctx).html
    assert "Shop now with your coupon" in html and "tier=gold&amp;utm_source=crm" in html


def test_no_more_products_than_configured_and_none_when_turned_off():
    few = REPO_CFG.model_copy(update={"campaigns": REPO_CFG.campaigns.model_copy(update={"recommendations": 2})})
    none = REPO_CFG.model_copy(update={"campaigns": REPO_CFG.campaigns.model_copy(update={"recommendations": 0})})
    base = {"campaign": "offer", "lang": "en", "locale": None, "first_name": "A", "occasion_date": date(2027, 2, 28),
            "years": None, "years_as_customer": 0, "favourite_category": None, "recommendations": SAMPLE_PRODUCTS,
            "coupon": None, "unsubscribe_url": "https://crm.example.com/unsubscribe/tok", "labels": {},
            "texts": renderer_for(REPO_CFG).labels("en", "product.")}
    assert [p["sku"] for p in message_context(few, **base)["customer"]["recommendations"]] == ["GROCERY-1027",
                                                                                                 "ELEC-0042"]
    ctx = message_context(none, **base)
    assert ctx["customer"]["recommendations"] == []
    msg = renderer_for(none).render("offer", ctx)
    assert "Picked for you" not in msg.html and ctx["shop_url"].replace("&", "&amp;") in msg.html  # the CTA stays


def test_a_product_or_shop_link_that_is_not_https_fails_naming_it():
    plain = replace(SAMPLE_PRODUCTS[0], sku="OLD-1", url="http://shop.example.com/p/1")
    with pytest.raises(RenderError, match="product OLD-1: 'http://shop.example.com/p/1' is not an https URL"):
        message_context(
            REPO_CFG, campaign="offer", lang="en", locale=None, first_name="A", occasion_date=date(2027, 2, 28),
            years=None, years_as_customer=0, favourite_category=None, recommendations=[plain], coupon=None,
            unsubscribe_url="https://crm.example.com/unsubscribe/tok", labels={}, texts={})
    from pydantic import ValidationError

    from crm_tasks.settings import CampaignSettings

    with pytest.raises(ValidationError, match="must be an https URL"):
        CampaignSettings(shop_url="http://shop.example.com/")


def test_a_message_planned_before_product_blocks_still_renders_with_the_shops_link():
    """A ledger row planned by the previous version (bare SKUs, no shop link) and sent by this one."""
    renderer = renderer_for(REPO_CFG)
    old = context("fa")
    old.pop("shop_url")
    old["customer"] = {**old["customer"], "recommendations": [{"sku": "GROCERY-1001", "category": "خواربار"}]}
    msg = renderer.render("offer", old)
    assert "https://shop.example.com/?utm_source=crm&amp;utm_medium=email&amp;utm_campaign=birthday" in msg.html
    assert "GROCERY-1001" not in msg.html and "GROCERY-1001" not in msg.text


def test_catalogue_text_is_data_never_template_code_nor_placeholders():
    """A product or source name is printed as it is: not evaluated, not filled in, escaped in HTML."""
    renderer = renderer_for(REPO_CFG)
    odd = [replace(SAMPLE_PRODUCTS[0], name="{{ 7*7 }} {n}", names={}, source_name="{product} {n} <i>x</i>"),
           replace(SAMPLE_PRODUCTS[2], name="{% for i in range(10**9) %}x{% endfor %}", names={})]
    ctx = message_context(
        REPO_CFG, campaign="offer", lang="en", locale=None, first_name="A", occasion_date=date(2027, 2, 28),
        years=None, years_as_customer=0, favourite_category=None, recommendations=odd, coupon=None,
        unsubscribe_url="https://crm.example.com/unsubscribe/tok", labels={}, texts=renderer.labels("en", "product."))
    assert ctx["customer"]["recommendations"][0]["reason"] == "Bought with {product} {n} <i>x</i> by 42 customers"
    msg = renderer.render("offer", ctx)
    assert "{{ 7*7 }} {n}" in msg.text and "49" not in msg.text.replace("utm", "")
    assert "{% for i in range(10**9) %}x{% endfor %}" in msg.text
    assert "&lt;i&gt;x&lt;/i&gt;" in msg.html and "<i>x</i>" not in msg.html


def test_a_stored_context_with_many_products_shows_at_most_ten():
    """The template's own bound, whatever a hand-edited ledger row holds."""
    renderer = renderer_for(REPO_CFG)
    ctx = context("en")
    one = ctx["customer"]["recommendations"][0]
    ctx["customer"] = {**ctx["customer"], "recommendations": [{**one, "sku": f"S{i}"} for i in range(5000)]}
    msg = renderer.render("offer", ctx)
    assert msg.html.count('width="96" height="96"') == 10 and msg.text.count("  * ") == 10


class _AsWritten(Renderer):
    """The templates as written, without the styles and texts compiled in per layout."""

    def _layout(self, context: dict) -> str:
        return ""


def test_styles_and_texts_compiled_in_per_layout_print_the_same_message():
    compiled, written = own_renderer(), _AsWritten(REPO_CFG.campaigns.templates, REPO_CFG.campaigns.locales,
                                                   shop_url=REPO_CFG.campaigns.shop_url)
    compiled.inline_after = 0
    for template in compiled.templates():
        for lang in compiled.languages:
            for brand in ("#0b6e4f", "#123abc", "#FFF"):
                for coupon in (True, False):
                    ctx = {**context(lang, first_name="<b>Ravi</b> & {{ x }}", coupon=coupon), "brand_color": brand}
                    assert compiled.render(template, ctx) == written.render(template, ctx), (template, lang, brand)
    # Compiled in, not looked up: 5 languages x 3 colours, each layout's base.html without the style look-ups.
    assert len(compiled._layouts) == 15 and all(p.startswith("@") for p in compiled._layouts.values())
    env = compiled.env
    source = env.loader.get_source(env, "base.html")[0]
    assert "s_body" in env.compile(source, "base.html", raw=True)
    assert "s_body" not in env.compile(source, "@0/base.html", raw=True)


def test_a_name_that_could_mean_something_else_is_looked_up_as_written(folder):
    (folder / "locales" / "en.yaml").write_text('hello: "Hello {name}"\nplain: "Plain & simple"\n', encoding="utf-8")
    macros = ('{% set s_p = "color:red" %}{% set s_q = "color:blue" %}{% set s_r = "a<b" %}'
              '{% macro p(s_p) %}<p style="{{ s_p }}">{{ t("plain") }}</p>{% endmacro %}'  # a parameter named s_p
              '{% macro q() %}<q style="{{ s_q }}">{{ s_r }}</q>{% endmacro %}')
    ctx = {"lang": "en", "dir": "ltr", "brand_color": "#000000", "customer": {"first_name": "A"}}
    cases = {
        '{{ ui.p("x") }}{{ ui.q() }}{{ ui.s_r }}': '<p style="x">Plain &amp; simple</p><q style="color:blue">a&lt;b</q>'
                                                   "a&lt;b",
        '{% set t = "own" %}{{ t }}{{ ui.s_q }}': "owncolor:blue",  # t rebound: not the catalogue's
        '{% macro t(k) %}[{{ k }}]{% endmacro %}{{ t("plain") }}': "[plain]",  # nor here
        '{% for ui in [{"s_q": "own"}] %}{{ ui.s_q }}{% endfor %}{{ ui.s_q }}': "owncolor:blue",  # in a loop
        '{% set ui = {"s_q": "own"} %}{{ ui.s_q }}': "own",  # the alias rebound
    }
    for body, expected in cases.items():
        renderer = ui_folder(folder, macros, body)
        renderer.inline_after = 0
        assert renderer.render("x", ctx).html == expected, body
        assert _AsWritten(folder, ["en"]).render("x", ctx).html == expected
    # Without the import the alias means nothing, as written; a text's placeholder still needs its value.
    for html, error in (("{{ ui.s_q }}", "'ui' is undefined"), ('{{ t("hello") }}', "uses {name}")):
        renderer = write_template(folder, html=html)
        renderer.inline_after = 0
        with pytest.raises(RenderError, match=error):
            renderer.render("x", ctx)


def test_a_layout_is_compiled_in_only_after_enough_messages():
    renderer = own_renderer()
    renderer.inline_after = 3
    messages = [renderer.render("offer", context("fa")) for _ in range(3)]
    assert renderer._layouts == {} and renderer.env.layout_values == []  # as written for the first three
    messages += [renderer.render("offer", context("fa")) for _ in range(2)]
    assert list(renderer._layouts.values()) == ["@0/"] and len(renderer.env.layout_values) == 1
    assert all(m == messages[0] for m in messages)


def test_plans_and_sends_share_a_renderer_until_a_template_file_changes(tmp_path):
    import shutil

    folder = tmp_path / "email"
    shutil.copytree(REPO_CFG.campaigns.templates, folder)
    cfg = REPO_CFG.model_copy(update={"campaigns": REPO_CFG.campaigns.model_copy(update={"templates": folder})})
    first = renderer_for(cfg)
    assert renderer_for(cfg) is first
    assert "Happy birthday" not in first.render("offer", context()).subject
    path = folder / "offer" / "subject.txt"
    path.write_text("Happy birthday " + path.read_text(encoding="utf-8"), encoding="utf-8")
    changed = renderer_for(cfg)
    assert changed is not first and changed.render("offer", context()).subject.startswith("Happy birthday")
