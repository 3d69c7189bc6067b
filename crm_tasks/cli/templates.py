"""The e-mail templates: ``crm templates check``."""

from __future__ import annotations

import sys

import click

from crm_tasks.cli.common import emit, json_output, reported, settings


@click.group("templates")
def templates_group() -> None:
    """The e-mail templates in templates/email/."""


@templates_group.command("check")
@json_output
def templates_check(as_json) -> None:
    """Render every template in every language against sample customers and products; fail on any error,
    and on a marketing template whose e-mails have no link besides unsubscribe (templates used only by
    campaigns with global_control: false are transactional and exempt).

    Example: crm templates check
    """
    from crm_tasks.messages.preview import check_templates

    cfg = settings()
    with reported(as_json):
        result = check_templates(cfg)
    lines = [(f"{result['rendered']} messages rendered from {len(result['templates'])} templates in "
              f"{len(result['languages'])} languages")]
    if result["transactional"]:
        lines.append(f"  transactional (no call to action needed): {', '.join(result['transactional'])}")
    lines += [f"  missing translations, {lang}: {', '.join(keys)}" for lang, keys in result["missing"].items()]
    lines += [f"  error: {e}" for e in result["errors"]]
    emit(as_json, result, "\n".join(lines))
    if result["errors"]:
        click.echo(f"error: {len(result['errors'])} template problems; the first: {result['errors'][0]}", err=True)
        sys.exit(1)
