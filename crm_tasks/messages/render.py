"""Rendering campaign e-mails from the Jinja templates in ``templates/email/``.

Rendering is pure: a template id, a language and an allow-listed context in,
subject, HTML and text out; no I/O after the templates are loaded. The
environment is sandboxed (no attribute tricks such as ``''.__class__``), a
missing variable is an error rather than an empty string, and HTML output is
autoescaped. The wording lives in ``locales/<lang>.yaml`` catalogs, so that a
marketer edits text, not templates; a key missing in a language falls back to
English. Compiled templates are cached by the environment and reused, and so are
the style macros of ``_ui.html``, once per language, direction and brand colour; a
layout that has rendered a thousand messages gets its templates compiled with its
style strings and fixed texts written in (``_InlineLayout``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from string import Formatter
from types import BuiltinMethodType

import yaml
from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.numbers import format_currency, format_decimal, format_percent
from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateNotFound,
    Undefined,
    pass_context,
    pass_eval_context,
    select_autoescape,
)
from jinja2.environment import TemplateModule
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension
from jinja2.lexer import Token
from jinja2.runtime import Context, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup, escape

from crm_tasks.errors import RenderError
from crm_tasks.messages.deadline import Overtime, time_limit
from crm_tasks.messages.links import with_utm
from crm_tasks.settings import Settings

RTL_LANGUAGES = frozenset({"fa", "ur", "ar", "he"})
PARTS = ("subject.txt", "body.html", "body.txt")
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
# What a macro library imported without context (_ui.html, _ui.txt) sees of the message.
LAYOUT_KEYS = ("lang", "dir", "brand_color")
# Bounds of one message: a template may not build a huge value or page (a typo or a hostile edit
# must fail that campaign's run, not exhaust the worker's memory).
MAX_VALUE_CHARS = 1_000_000  # a string or list a single "*" may build
MAX_MESSAGE_CHARS = 2_000_000  # subject + HTML + text of one message
MAX_RANGE = 1_000  # items of range(): templates loop over a handful of recommendations, not more
MAX_RENDER_SECONDS = 2.0  # one message; the shipped templates take about a quarter of a millisecond


@dataclass(frozen=True)
class RenderedMessage:
    subject: str
    html: str
    text: str


def language_of(locale: str | None, languages: list[str]) -> str:
    """The template language for a customer locale ('hi-IN' -> 'hi'); the first language if unsupported."""
    lang = (locale or "").replace("_", "-").split("-")[0].lower()
    return lang if lang in languages else languages[0]


@lru_cache(maxsize=64)
def babel_locale(locale: str | None, lang: str) -> Locale:
    """The customer's own locale for formatting (en-IN groups lakhs), else the template language's."""
    for candidate in (locale, lang):
        if candidate:
            try:
                return Locale.parse(candidate.replace("-", "_"))
            except (ValueError, UnknownLocaleError):
                continue
    return Locale.parse("en")


_MISSING = object()


def _frozen(value) -> bool:
    """Whether a value of a macro module can never change: text, numbers, macros, and
    lists or dicts of them (the immutable sandbox refuses to modify those)."""
    if type(value) in (list, tuple):
        return all(_frozen(v) for v in value)
    if type(value) is dict:
        return all(_frozen(k) and _frozen(v) for k, v in value.items())
    return type(value) in (str, Markup, int, float, bool, type(None), Macro)


class _EmailTemplate(Template):
    """A template whose context-free imports are built once per language, direction and brand colour.

    ``{% import "_ui.html" as ui %}`` (no ``with context``) gives the importing template
    this template's module. Jinja builds such a module once, from the globals alone,
    which would hide ``lang``, ``dir`` and ``brand_color`` from the styles; ``with
    context`` shows them, but rebuilds the module for every message (a quarter of a
    render). Here the module sees those three values and ``t()``, nothing else, so it
    is the same for every message that shares them. It is kept for those messages only
    if all its top-level values are frozen (text, numbers, macros): a macro can then
    neither read anything else about a customer (``customer`` is an undefined variable
    there) nor remember anything from one message to the next (no ``namespace()`` or
    ``cycler()``), so reusing the module changes no output.
    """

    def _get_default_module(self, ctx: Context | None = None) -> TemplateModule:
        # Jinja calls this for {% import %} and {% from ... import %} without context.
        if ctx is None:
            return super()._get_default_module()
        key = tuple(ctx.get(k, _MISSING) for k in LAYOUT_KEYS)
        keep = all(type(v) is str for v in key)  # a missing or odd value: a module for this message only
        modules = self.__dict__.setdefault("_layout_modules", {})
        if keep and key in modules:
            return modules[key]
        names = {"t": self.environment.t_function} | {k: v for k, v in zip(LAYOUT_KEYS, key) if v is not _MISSING}
        module_ctx = self.new_context(names, shared=True)  # shared: no other globals (range, namespace, ...)
        module = TemplateModule(self, module_ctx)
        if keep and all(_frozen(v) for v in module_ctx.vars.values()):
            if len(modules) >= 256:  # bounded: a stored context may carry any brand colour
                modules.clear()
            modules[key] = module
        return module


_DICT_ATTRIBUTES = frozenset(dir(dict))
_CALL_MARKERS = frozenset({"_loop_vars", "_block_vars"})  # what compiled templates pass Context.call besides arguments
_MODULE_EXPORTS = (str, Markup, Macro)  # what _ui.html exports: style strings and macros


class _TemplateLoader(FileSystemLoader):
    """Only the e-mail templates themselves (.html and .txt): an include of a catalog, a key file
    or anything else in the folder is "not found"; paths outside it never resolve (FileSystemLoader).
    ``@N/offer/body.html`` is ``offer/body.html`` compiled for layout N (see ``_InlineLayout``)."""

    def get_source(self, environment, template: str):
        if not template.endswith((".html", ".txt")):
            raise TemplateNotFound(template)
        if template.startswith("@"):
            source, filename, uptodate = super().get_source(environment, template.partition("/")[2])
            return source, filename, uptodate
        return super().get_source(environment, template)


class _InlineLayout(Extension):
    """Compiles a layout's fixed texts into its templates, and the style strings of ``_ui.html`` into its HTML
    templates, as text, once per layout.

    A message's styles depend on its language, direction and brand colour only (the module of
    ``_ui.html`` is built once per layout: ``_EmailTemplate``), yet every ``{{ ui.s_p }}`` was
    looked up, finalised and escaped again for every message: about a fifth of a render. The
    renderer names a template ``@N/...`` for layout N; this filter replaces, in such a template's
    tokens, each ``{{ ui.NAME }}`` (``ui`` the alias of ``{% import "_ui.html" as ui %}``) and,
    inside ``_ui.html`` itself, each ``{{ NAME }}`` by the value the module has for that layout,
    escaped as ``{{ }}`` would. Only where the name cannot mean anything else: an alias used
    anywhere but as ``alias.NAME`` or imported twice or ``with context``, or a bare name bound
    anywhere but by one ``{% set NAME = ... %}``, or used in any other expression, is left as it
    was. In both parts, each ``t("key")`` without values is the key's text in the layout's language
    (``_inline_texts``). The output is the same text (tests/messages/test_render.py compares every
    shipped template, language and direction with and without it)."""

    def filter_stream(self, stream):
        name = stream.name or ""
        if not name.startswith("@"):
            return stream
        layout, _, path = name[1:].partition("/")
        styles, texts = self.environment.layout_values[int(layout)]
        tokens = _inline_texts(list(stream), texts)
        if not path.endswith(".html"):  # a text part: no styles
            return tokens
        if path == "_ui.html":
            return _inline_bare(tokens, styles)
        return _inline_aliased(tokens, styles)


def _is(token: Token, kind: str, value: str | None = None) -> bool:
    return token.type == kind and (value is None or token.value == value)


def _inline_texts(tokens: list[Token], texts: dict[str, str]) -> list[Token]:
    """Each ``t("key")`` without values as the text itself, a string literal (``t()`` returns text, not markup:
    the template escapes it where it prints it), where ``t`` is only ever called (never bound) and the key's text has no
    placeholder to fill (a missing key or placeholder still fails when the message renders)."""
    n = len(tokens)
    if any(_is(tokens[i], "name", "t") and (i + 1 >= n or not _is(tokens[i + 1], "lparen")
                                             or (i and _is(tokens[i - 1], "name", "macro"))) for i in range(n)):
        return tokens  # t bound to something else here (a variable, a macro of its own)

    def text_at(i: int) -> tuple[Token, int] | None:
        if (i + 3 < n and _is(tokens[i], "name", "t") and not (i and _is(tokens[i - 1], "dot"))
                and _is(tokens[i + 1], "lparen") and _is(tokens[i + 2], "string") and _is(tokens[i + 3], "rparen")
                and "{" not in texts.get(tokens[i + 2].value, "{")):
            return Token(tokens[i].lineno, "string", texts[tokens[i + 2].value]), 4
        return None

    return _replaced(tokens, text_at)


def _inline_aliased(tokens: list[Token], values: dict[str, str]) -> list[Token]:
    """``{{ ui.NAME }}`` as text, where ``ui`` is only ever the alias of one import of ``_ui.html``."""
    n = len(tokens)
    imports = [i + 4 for i in range(n - 5)
               if _is(tokens[i], "name", "import") and _is(tokens[i + 1], "string", "_ui.html")
               and _is(tokens[i + 2], "name", "as") and _is(tokens[i + 3], "name")
               and (_is(tokens[i + 4], "block_end") or _is(tokens[i + 4], "name", "without"))]
    if len(imports) != 1:
        return tokens
    alias_at = imports[0] - 1
    alias = tokens[alias_at].value
    uses = [i for i in range(n) if _is(tokens[i], "name", alias) and i != alias_at]
    if any(i + 1 >= n or not _is(tokens[i + 1], "dot") for i in uses):
        return tokens

    def style_at(i: int) -> tuple[Token, int] | None:
        if (i + 4 < n and _is(tokens[i], "variable_begin") and _is(tokens[i + 1], "name", alias)
                and _is(tokens[i + 2], "dot") and _is(tokens[i + 3], "name") and tokens[i + 3].value in values
                and _is(tokens[i + 4], "variable_end")):
            return Token(tokens[i].lineno, "data", values[tokens[i + 3].value]), 5
        return None

    return _replaced(tokens, style_at)


def _inline_bare(tokens: list[Token], values: dict[str, str]) -> list[Token]:
    """``{{ NAME }}`` as text in ``_ui.html``, for each module value bound by one top-level ``set`` only."""
    n = len(tokens)
    printed: dict[str, list[int]] = {}
    other: set[str] = set()
    sets: dict[str, int] = {}
    for i, token in enumerate(tokens):
        if token.type != "name" or token.value not in values:
            continue
        if 0 < i < n - 1 and _is(tokens[i - 1], "variable_begin") and _is(tokens[i + 1], "variable_end"):
            printed.setdefault(token.value, []).append(i - 1)
        elif i > 1 and _is(tokens[i - 1], "name", "set") and _is(tokens[i - 2], "block_begin") \
                and i + 1 < n and _is(tokens[i + 1], "assign"):
            sets[token.value] = sets.get(token.value, 0) + 1
        else:
            other.add(token.value)
    starts = {at: name for name, ats in printed.items() if sets.get(name) == 1 and name not in other for at in ats}
    return _replaced(tokens, lambda i: (Token(tokens[i].lineno, "data", values[starts[i]]), 3) if i in starts else None)


def _replaced(tokens: list[Token], run_at: Callable[[int], tuple[Token, int] | None]) -> list[Token]:
    """``tokens`` with each run that ``run_at(i)`` recognises at i replaced by the one token it gives (with the
    run's length)."""
    out, i = [], 0
    while i < len(tokens):
        hit = run_at(i)
        if hit is None:
            out.append(tokens[i])
            i += 1
        else:
            out.append(hit[0])
            i += hit[1]
    return out


def _bounded_range(*args) -> range:
    items = range(*args)
    if len(items) > MAX_RANGE:
        raise SecurityError(f"range() of {len(items)} items; at most {MAX_RANGE} in a template")
    return items


def _too_big(size: int, what: str) -> None:
    if size > MAX_VALUE_CHARS:
        raise SecurityError(f"{what} of {size} characters; at most {MAX_VALUE_CHARS} in a template")


def _joined_size(separator: str, items: list) -> int:
    """How long joining ``items`` with ``separator`` would be (non-text items fail the join itself)."""
    return len(separator) * max(len(items) - 1, 0) + sum(len(i) for i in items if isinstance(i, str))


def _replaced_size(text: str, old: str, new: str) -> int:
    """How long ``text`` would be with every ``old`` replaced by ``new`` (an empty ``old`` matches between
    every character)."""
    hits = len(text) + 1 if not old else text.count(old)
    return len(text) + hits * max(len(new) - len(old), 0)


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_format(text: str) -> None:
    """A format string's widths and precisions size its result before anything is built: refuse a huge one,
    in ``str.format`` specs ('{0:>99999999}') and in ``%`` specs ('%99999999s'); a '*' width is refused."""
    try:
        specs = [spec for _, _, spec, _ in Formatter().parse(text) if spec]
    except ValueError:
        specs = []  # not a str.format string: the call itself will say so
    for spec in specs:
        for number in re.findall(r"\d+", spec):
            _too_big(int(number), "a format width")
    for width, precision in _PERCENT_SPEC.findall(text):
        if "*" in (width, precision):
            raise SecurityError("a '*' width in a % format; write the width in the template")
        _too_big(int(width or 0), "a format width")
        _too_big(int(precision or 0), "a format precision")


def _check_str_method(text: str, name: str, args: tuple, kwargs: dict) -> tuple:
    """Refuse a ``str`` method call whose result would pass the bound, from its arguments alone; returns
    the arguments (an iterable given to ``join`` is read once, here)."""
    if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        _too_big(args[0], f"str.{name}() width")
    elif name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        _too_big(len(text) * max(int(tab), 1), "str.expandtabs() result")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        _too_big(_replaced_size(text, args[0], args[1]), "str.replace() result")
    elif name == "join" and args:
        items = list(args[0])
        _too_big(_joined_size(text, items), "str.join() result")
        args = (items, *args[1:])
    return args


_PRINTABLE = (str, int, float, Decimal, date, type(None))
# The exact types nearly every printed value has: one set look-up, no isinstance chain, per {{ }}.
_PRINTABLE_EXACT = frozenset({str, Markup, int, float, Decimal, date, datetime, bool, type(None)})


def _printable(value):
    """What ``{{ ... }}`` may print: text, numbers, dates, and lists or mappings of them. A function, a
    class or any other object would print its repr, with module paths and memory addresses."""
    kind = type(value)
    if kind in _PRINTABLE_EXACT or isinstance(value, (*_PRINTABLE, Undefined)):  # an undefined says so itself
        return value
    if kind in (list, tuple) and all(_printable(v) is v for v in value):
        return value
    if kind is dict and all(_printable(k) is k and _printable(v) is v for k, v in value.items()):
        return value
    raise SecurityError(f"a {kind.__name__} cannot be printed in a message; print a text, number or date")


def _bounded_filters(filters: dict) -> dict:
    """Jinja's filters that size their result from an argument, checked first (filters are not calls)."""
    from jinja2 import filters as jf

    def center(value, width=80):
        _too_big(int(width), "center() width")
        return jf.do_center(value, width)

    def format_(value, *args, **kwargs):
        _check_format(str(value))
        return jf.do_format(value, *args, **kwargs)

    @pass_eval_context
    def join(eval_ctx, value, d="", attribute=None):
        items = list(value)
        _too_big(_joined_size(str(d), items), "join() result")
        return jf.sync_do_join(eval_ctx, items, d, attribute)

    def indent(s, width=4, first=False, blank=False):
        pad = width if isinstance(width, int) else len(str(width))
        _too_big(len(str(s)) + (str(s).count("\n") + 1) * pad, "indent() result")
        return jf.do_indent(s, width, first, blank)

    @pass_eval_context
    def replace(eval_ctx, s, old, new, count=None):
        _too_big(_replaced_size(str(s), str(old), str(new)), "replace() result")
        return jf.do_replace(eval_ctx, s, old, new, count)

    return {**filters, "center": center, "format": format_, "join": join, "indent": indent, "replace": replace}


class _EmailEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, minus checks that cannot fail, on the paths every message takes.

    - Calling the renderer's own ``t()`` or a template macro skips the "was this
      callable marked unsafe" look-up (neither ever is); ``t()`` gets the context directly.
    - ``customer.first_name`` on a plain dict returns the item: the parent class first
      tries a Python attribute of that name, which a dict has only for the names of
      its methods (those still go the parent's way), and returns items unchecked.
    - ``ui.s_p`` or ``ui.paragraph`` on an imported macro module returns the exported
      string or macro: the parent's checks refuse only names starting with "_" (still
      refused here, by the parent) and attributes of functions, types, frames and
      mutable containers, which a module is not.
    Everything else (other objects, calls, items, operators) is checked by the parent class.
    """

    template_class = _EmailTemplate
    t_function: object = _MISSING  # the renderer's t(), set by Renderer
    layout_values: list[tuple[dict[str, str], dict[str, str]]]  # per layout N of @N/...: styles (escaped), texts

    def join_path(self, template: str, parent: str) -> str:
        # A layout's template extends and imports that layout's base.html and _ui.html.
        if parent.startswith("@") and not template.startswith("@"):
            return f"{parent.partition('/')[0]}/{template}"
        return template
    # The operators that can build an unbounded value are checked (see call_binop); others are not.
    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Context, operator: str, left, right):
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_VALUE_CHARS:
                    raise SecurityError(f"a value of {len(seq) * n} items; at most {MAX_VALUE_CHARS} in a template")
        elif operator == "**" and isinstance(right, int | float) and abs(right) > 64:
            raise SecurityError(f"an exponent of {right}; at most 64 in a template")
        elif operator == "%" and isinstance(left, str):
            _check_format(left)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj, /, *args, **kwargs):
        if obj is self.t_function and not kwargs.get("_loop_vars") and not kwargs.get("_block_vars"):
            # What Context.call does for a pass_context function outside a loop or a {% set %} block.
            kwargs.pop("_loop_vars", None)
            kwargs.pop("_block_vars", None)
            return obj(context, *args, **kwargs)
        if type(obj) is Macro:
            if (len(args) == obj._argument_count and not kwargs.keys() - _CALL_MARKERS and not obj.caller
                    and not obj.catch_kwargs and not obj.catch_varargs):
                # What Context.call and Macro.__call__ do with positional arguments only, without their
                # argument matching: a shipped message calls about 18 macros, and the matching was a fifth of it.
                return obj._invoke(list(args), context.eval_ctx.autoescape)
            return context.call(obj, *args, **kwargs)
        if type(obj) is BuiltinMethodType and type(obj.__self__) is str:
            args = _check_str_method(obj.__self__, obj.__name__, args, kwargs)
        return super().call(context, obj, *args, **kwargs)

    def getattr(self, obj, attribute: str):
        kind = type(obj)
        if kind is str and attribute in ("format", "format_map"):
            _check_format(obj)  # the sandbox wraps str.format, so the call itself is not seen as one
        if kind is dict:
            if attribute not in _DICT_ATTRIBUTES and attribute in obj:
                return obj[attribute]
        elif kind is TemplateModule and not attribute.startswith("_"):
            value = obj.__dict__.get(attribute)
            if type(value) in _MODULE_EXPORTS:
                return value
        return super().getattr(obj, attribute)


class Renderer:
    """Loads the templates and catalogs of one folder once; renders any number of messages."""

    inline_after = 1000  # messages of a layout rendered as written before its templates are compiled for it

    def __init__(self, folder: Path, languages: list[str], render_seconds: float = MAX_RENDER_SECONDS, *,
                 shop_url: str | None = None, utm_source: str = "crm") -> None:
        self.folder = Path(folder)
        self.languages = list(languages)
        self.render_seconds = render_seconds
        self._shared_compiled = False
        # For contexts planned before messages had shop links (see _upgraded): crm.yaml's shop.
        self.shop_url, self.utm_source = shop_url, utm_source
        self._variant_subjects: dict[str, object] = {}
        self.catalogs = {lang: self._catalog(lang) for lang in self.languages}
        if "en" not in self.catalogs and self.languages:
            raise RenderError(f"{self.folder}: the fallback language 'en' must be among the languages")
        # Each language's texts with the English ones beneath: t() looks a key up once.
        english = self.catalogs.get("en", {})
        self._texts = {lang: {**english, **catalog} for lang, catalog in self.catalogs.items()}
        self._english = english
        self.env = _EmailEnvironment(
            loader=_TemplateLoader(str(self.folder)),
            undefined=StrictUndefined,
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
            cache_size=-1,
            finalize=_printable,
            extensions=[_InlineLayout],
        )
        self.env.layout_values = []
        self._layouts: dict[tuple, str] = {}  # (lang, dir, brand_color) -> "@N/", or "" where nothing inlines
        self._renders: dict[tuple, int] = {}  # renders of a layout not yet compiled for it
        self.env.globals["t"] = self.env.t_function = self._t
        self.env.globals["range"] = _bounded_range
        self.env.filters = _bounded_filters(self.env.filters)

    def _catalog(self, lang: str) -> dict[str, str]:
        path = self.folder / "locales" / f"{lang}.yaml"
        if not path.is_file():
            return {}
        text = path.read_text(encoding="utf-8")
        try:
            # libyaml reads the five catalogues of every plan and send in a tenth of pure Python's time; a
            # broken file is read again in Python, whose error shows the offending line with a caret.
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
        except yaml.YAMLError:
            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:
                raise RenderError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise RenderError(f"{path}: expected a flat mapping of keys to text, e.g. birthday.subject: \"...\"")
        return {str(k): v for k, v in data.items()}

    @pass_context
    def _t(self, ctx, key: str, **values) -> str:
        """The text of ``key`` in the message's language (English if missing), placeholders filled."""
        lang = ctx.get("lang", "en")
        template = self._texts.get(lang, self._english).get(key)
        if template is None:
            raise RenderError(f"no text for '{key}' in locales/en.yaml (nor in {lang}.yaml); add it")
        if "{" not in template:  # no placeholder to fill
            return template

        def fill(m: re.Match) -> str:
            name = m.group(1)
            if name not in values:
                raise RenderError(f"'{key}' in {lang} uses {{{name}}}, which the template does not pass")
            return str(values[name])

        return _PLACEHOLDER.sub(fill, template)

    def labels(self, lang: str, prefix: str) -> dict[str, str]:
        """Texts of every key under ``prefix`` in ``lang``, English where missing; keyed without the prefix."""
        out = {k.removeprefix(prefix): v for k, v in self.catalogs.get("en", {}).items() if k.startswith(prefix)}
        out.update({k.removeprefix(prefix): v for k, v in self.catalogs.get(lang, {}).items() if k.startswith(prefix)})
        return out

    def render(self, template: str, context: dict) -> RenderedMessage:
        """Subject, HTML and text of one message. The subject is one line, or an error."""
        if "shop_url" not in context and self.shop_url is not None:
            context = self._upgraded(context)
        try:
            # Compiled before the clock starts (once per template and process: the environment caches them),
            # so that the limit bounds rendering, not a first compile on a busy machine.
            subject_part = self._subject(template, context.get("variant_subject"))
            layout = self._layout(context)
            html_part = self.env.get_template(f"{layout}{template}/body.html")
            text_part = self.env.get_template(f"{layout}{template}/body.txt")
            self._compile_shared()
            with time_limit(self.render_seconds):
                subject = " ".join(subject_part.render(context).split())
                body = {**context, "subject": subject}
                html = html_part.render(body)
                text = text_part.render(body)
        except Overtime:
            raise RenderError(f"template {template} ({context.get('lang')}): rendering one message took more than "
                              f"{self.render_seconds:g} s; loops over too many items?") from None
        except RenderError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a template (IndexError, RecursionError, ...) is its own
            raise RenderError(f"template {template} ({context.get('lang')}): {exc.__class__.__name__}: {exc}") from None
        size = len(subject) + len(html) + len(text)
        if size > MAX_MESSAGE_CHARS:
            raise RenderError(f"template {template} ({context.get('lang')}): the message has {size} characters; "
                              f"at most {MAX_MESSAGE_CHARS}")
        return RenderedMessage(subject, html, text)

    def _compile_shared(self, prefix: str = "") -> None:
        """The folder's shared files (the layouts and macros templates extend and import), compiled once: as
        written on the first render, for a layout (``prefix``) when ``_layout`` first compiles it."""
        if not prefix and self._shared_compiled:
            return
        for path in sorted(self.folder.glob("*.html")) + sorted(self.folder.glob("*.txt")):
            self.env.get_template(prefix + path.name)
        if not prefix:
            self._shared_compiled = True

    def _layout(self, context: dict) -> str:
        """The prefix of the templates compiled for this message's layout (``_InlineLayout``): "@N/", or ""
        (the templates as written) for the first ``inline_after`` messages of a layout (compiling the templates
        for a layout takes about as long as rendering a thousand messages, which it then makes 20-30 % faster: a
        large plan or send gains, a preview or a test would only wait), and for a layout whose ``_ui.html`` module
        is not the same for every message (an odd value, or more than 256 layouts)."""
        key = tuple(context.get(k) for k in LAYOUT_KEYS)
        if not all(type(v) is str for v in key):  # an odd value: the templates as written, which refuse it
            return ""
        prefix = self._layouts.get(key)
        if prefix is None:
            seen = self._renders[key] = self._renders.get(key, 0) + 1
            if seen <= self.inline_after:
                return ""
            styles = self._layout_styles(key) if len(self._layouts) < 256 else None
            prefix = ""
            if styles is not None:
                prefix = f"@{len(self.env.layout_values)}/"
                self.env.layout_values.append((styles, self._texts.get(key[0], self._english)))
                self._compile_shared(prefix)
            self._layouts[key] = prefix
        return prefix

    def _layout_styles(self, key: tuple) -> dict[str, str] | None:
        """The style strings of ``_ui.html``'s module for a layout, escaped as ``{{ }}`` prints them; None where
        the module is built for each message (see ``_EmailTemplate``) or there is no ``_ui.html``."""
        if not (self.folder / "_ui.html").is_file():
            return None
        ui = self.env.get_template("_ui.html")
        module = ui._get_default_module(ui.new_context(dict(zip(LAYOUT_KEYS, key, strict=True))))
        if ui.__dict__.get("_layout_modules", {}).get(key) is not module:
            return None
        return {name: str(escape(_printable(value))) for name, value in vars(module).items()
                if not name.startswith("_") and type(value) in (str, Markup)}

    def _upgraded(self, context: dict) -> dict:
        """A context stored in the ledger before messages had shop links and product blocks (planned by an
        older version, sent by this one): the shop's link with the campaign's UTM parameters, and no products
        (its recommendations were bare SKUs, which the product blocks cannot show)."""
        campaign, customer = context.get("campaign"), context.get("customer")
        name = campaign.get("name") if isinstance(campaign, dict) else None
        name = name if isinstance(name, str) and name else "crm"
        if isinstance(customer, dict):
            customer = {**customer, "recommendations": []}
        return {**context, "customer": customer,
                "shop_url": with_utm(self.shop_url, source=self.utm_source, campaign=name, content=name)}

    def _subject(self, template: str, variant_subject: str | None):
        """The subject's template: an A/B variant's own text (compiled in the same sandbox, once per text),
        else the template folder's subject.txt."""
        if variant_subject is None:
            return self.env.get_template(f"{template}/subject.txt")
        compiled = self._variant_subjects.get(variant_subject)
        if compiled is None:
            if len(self._variant_subjects) > 256:
                self._variant_subjects.clear()
            compiled = self._variant_subjects[variant_subject] = self.env.from_string(variant_subject)
        return compiled

    def check(self, template: str) -> None:
        """Compile a template's three parts (syntax errors surface here, before any customer is rendered)."""
        for part in PARTS:
            try:
                self.env.get_template(f"{template}/{part}")
            except TemplateError as exc:
                raise RenderError(f"template {template}/{part}: {exc.__class__.__name__}: {exc}") from None

    def templates(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir() if p.is_dir() and all((p / f).is_file() for f in PARTS))


_RENDERERS: dict[tuple, Renderer] = {}


def renderer_for(cfg: Settings) -> Renderer:
    """The renderer of the configured template folder, shared by every plan, send and check of this process
    while the folder's files are byte for byte the same: compiling a campaign's templates takes as long as
    rendering hundreds of its messages, and a process (a test run, the demo) plans many campaigns. A changed
    file (a marketer's edit, a test's own folder) gets a renderer of its own."""
    folder = Path(cfg.campaigns.templates)
    key = (str(folder.resolve()), tuple(cfg.campaigns.locales), cfg.campaigns.shop_url, cfg.campaigns.utm_source,
           _folder_digest(folder))
    renderer = _RENDERERS.get(key)
    if renderer is None:
        if len(_RENDERERS) >= 8:
            _RENDERERS.clear()
        renderer = _RENDERERS[key] = Renderer(folder, cfg.campaigns.locales, shop_url=cfg.campaigns.shop_url,
                                              utm_source=cfg.campaigns.utm_source)
    return renderer


def _folder_digest(folder: Path) -> str:
    """A digest of every file's path and content under ``folder`` (a few dozen small files: about a millisecond;
    content rather than modification times, which two writes within a clock tick share)."""
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# A campaign's messages share a handful of dates, coupon values and product prices per locale; Babel takes
# tens of microseconds a call, a large share of building 100k contexts (bench/README.md, campaigns).
@lru_cache(maxsize=4096)
def format_coupon(value: Decimal, kind: str, currency: str | None, loc: Locale) -> str:
    if kind == "percent":
        return format_percent(value / 100, locale=loc)
    return format_currency(value, currency, locale=loc)


@lru_cache(maxsize=4096)
def long_date(day: date, loc: Locale) -> str:
    return format_date(day, format="long", locale=loc)


@lru_cache(maxsize=16_384)
def format_price(price: Decimal, currency: str, loc: Locale) -> str:
    """A product's price in the customer's locale and the product's currency ('₹1,299.00', '‎₹۱٬۲۹۹٫۰۰')."""
    return format_currency(price, currency, locale=loc)


@lru_cache(maxsize=4096)
def format_count(n: int, loc: Locale) -> str:
    return format_decimal(n, locale=loc)


def product_reason(texts: dict[str, str], kind: str, source: str | None, customers: int, loc: Locale) -> str:
    """Why a product is shown, in the message's language: ``texts`` are the catalog's ``product.*`` texts
    (``reason_cross_sell``, ``reason_up_sell``, ``reason_popular``, each with a ``_one`` form for one customer),
    ``{product}`` the product it comes from, ``{n}`` how many customers stand behind it."""
    text = (texts.get(f"reason_{kind}_one") if customers == 1 else None) or texts.get(f"reason_{kind}")
    if text is None:
        raise RenderError(f"no text for 'product.reason_{kind}' in locales/en.yaml; add it")
    values = {"product": source or "", "n": format_count(customers, loc)}
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def product_block(item, *, lang: str, loc: Locale, labels: dict[str, str], texts: dict[str, str],
                  utm: dict[str, str]) -> dict:
    """One product of a message, as the templates show it: ``item`` is a stored recommendation
    (crm_tasks.analytics.recommendations.Recommendation: sku, kind, source_name, source_names, customers, name,
    names, category, price, currency, url, image_url). Both the product and the one its reason names are shown
    in the message's language where the catalogue has it, else by their default name."""
    try:
        url = with_utm(item.url, **utm)
    except ValueError as exc:
        raise RenderError(f"product {item.sku}: {exc} (fix its url in the products/ catalogue)") from None
    return {
        "sku": item.sku,
        "name": item.names.get(lang) or item.name,
        "price": format_price(item.price, item.currency, loc),
        "image_url": item.image_url,
        "url": url,
        "category": labels.get(item.category, item.category),
        "reason": product_reason(texts, item.kind, item.source_name_in(lang), item.customers, loc),
    }


def message_context(
    cfg: Settings,
    *,
    campaign: str,
    lang: str,
    locale: str | None,
    first_name: str | None,
    occasion_date: date,
    years: int | None,
    years_as_customer: int,
    favourite_category: str | None,
    recommendations: Sequence,
    coupon: dict | None,
    unsubscribe_url: str,
    labels: dict[str, str],
    texts: dict[str, str],
    variant: str | None = None,
) -> dict:
    """The whole render context of one message: only these allow-listed, JSON-safe values.

    ``labels`` are the category names in the message's language, ``texts`` its ``product.*`` texts
    (``Renderer.labels(lang, "product.")``). ``recommendations`` are the products to show, best first
    (``Recommendation`` objects; at most ``campaigns.recommendations`` are kept). ``coupon`` holds code,
    value (Decimal), type, currency, expires_on (date) and optionally landing_url. Shop links carry the
    campaign's UTM parameters, ``utm_content`` being the A/B ``variant`` (the campaign's name without one).
    """
    loc = babel_locale(locale, lang)
    settings = cfg.campaigns
    utm = {"source": settings.utm_source, "campaign": campaign, "content": variant or campaign}
    coupon_ctx = None
    landing = None
    if coupon is not None:
        coupon_ctx = {
            "code": coupon["code"],
            "value": format_coupon(Decimal(coupon["value"]), coupon["type"], coupon.get("currency"), loc),
            "expires": long_date(coupon["expires_on"], loc),
        }
        landing = coupon.get("landing_url")
    try:
        shop_url = with_utm(landing or settings.shop_url, **utm)
    except ValueError as exc:
        raise RenderError(f"campaign {campaign}: {exc} (the coupon's landing page, or campaigns.shop_url in "
                          "crm.yaml)") from None
    products = [product_block(r, lang=lang, loc=loc, labels=labels, texts=texts, utm=utm)
                for r in recommendations[:settings.recommendations]]
    return {
        "lang": lang,
        "dir": "rtl" if lang in RTL_LANGUAGES else "ltr",
        "customer": {
            "first_name": first_name or "",
            "years_as_customer": years_as_customer,
            "favourite_category": labels.get(favourite_category) if favourite_category else None,
            "recommendations": products,
        },
        "occasion": {"date": long_date(occasion_date, loc), "years": years},
        "coupon": coupon_ctx,
        "campaign": {"name": campaign},
        "sender": {"name": settings.sender.name, "postal_address": settings.sender.postal_address},
        "shop_url": shop_url,
        "unsubscribe_url": unsubscribe_url,
        "brand_color": settings.brand_color,
    }
