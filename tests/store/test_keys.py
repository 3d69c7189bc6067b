"""No built-in secret: every database gets its own random keys at `crm db upgrade`; the signing key
rotates with a grace period for links already sent, the hashing key never changes; CRM_SECRET_KEY can
sign instead. On SQLite and PostgreSQL, through the CLI and the public unsubscribe endpoint."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pydantic import SecretStr

from crm_tasks.cli import main
from crm_tasks.delivery.suppression import unsubscribe_token
from crm_tasks.delivery.unsubscribe import create_app
from crm_tasks.errors import ConfigError
from crm_tasks.settings import load_settings
from crm_tasks.store.engine import make_engine, upgrade
from crm_tasks.store.keys import load_keys, rotate_signing_key
from tests.factories import add_customers

ONE_CLICK = {"data": {"List-Unsubscribe": "One-Click"}}
REPO = Path(__file__).parents[2]


def keys_of(engine, cfg, now=None):
    with engine.connect() as conn:
        return load_keys(conn, cfg, now)


def test_every_database_gets_its_own_random_keys_and_the_source_holds_none(engine, cfg, tmp_path):
    mine = keys_of(engine, cfg)
    other_db = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    upgrade(other_db)
    theirs = keys_of(other_db, cfg)
    assert re.fullmatch(r"[0-9a-f]{64}", mine.signing) and re.fullmatch(r"[0-9a-f]{64}", mine.hashing)
    assert len({mine.signing, mine.hashing, theirs.signing, theirs.hashing}) == 4
    assert cfg.secret_key is None and mine.source == "database"
    # Nothing that looks like a key is written in the library, its settings or the DAGs.
    source = "\n".join(p.read_text(encoding="utf-8") for folder in ("crm_tasks", "dags", "plugins")
                       for p in (REPO / folder).rglob("*.py")) + (REPO / "crm.yaml").read_text(encoding="utf-8")
    assert "development-only-secret" not in source
    assert not re.search(r"""secret_key\s*[:=]\s*(?:str\s*=\s*)?["'][^"']{8,}["']""", source)
    # Keys never show in a repr (logs, XCom, tracebacks).
    assert mine.signing not in repr(mine) and mine.hashing not in repr(mine)


def test_rotation_keeps_links_already_sent_working_for_the_grace_period_only(engine, cfg):
    add_customers(engine, {"customer_id": "C1", "birthday": date(1990, 5, 10)})
    before = keys_of(engine, cfg)
    old_link = unsubscribe_token("C1", before.signing)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        done = rotate_signing_key(conn, cfg, grace_days=30, now=now)
    after = keys_of(engine, cfg)
    assert after.signing != before.signing and after.verifying == (after.signing, before.signing)
    assert after.hashing == before.hashing  # suppressions of purged profiles keep matching
    assert done.old_links_valid_until == (now + timedelta(days=30)).isoformat(timespec="seconds")
    # After the grace period only the new key verifies.
    later = keys_of(engine, cfg, now + timedelta(days=31))
    assert later.verifying == (after.signing,)
    # Through the public endpoint: the old link still unsubscribes during the grace period.
    client = TestClient(create_app(lambda: cfg, lambda: engine))
    assert client.post(f"/unsubscribe/{old_link}", **ONE_CLICK).status_code == 200
    assert client.get(f"/unsubscribe/{unsubscribe_token('C1', after.signing)}").status_code == 200
    with engine.begin() as conn:  # a second rotation with no grace retires both earlier keys at once
        rotate_signing_key(conn, cfg, grace_days=0)
    assert client.get(f"/unsubscribe/{old_link}").status_code == 400


def test_crm_db_rotate_key_from_the_command_line(use_settings, engine, cfg):
    before = keys_of(engine, cfg)
    out = CliRunner().invoke(main, ["db", "rotate-key", "--grace-days", "7", "--json"])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    assert before.signing not in out.output and keys_of(engine, cfg).signing not in out.output
    assert payload["retired_key_ids"] and payload["new_key_id"] not in payload["retired_key_ids"]
    assert keys_of(engine, cfg).verifying[1] == before.signing
    bad = CliRunner().invoke(main, ["db", "rotate-key", "--grace-days", "-1"])
    assert bad.exit_code == 2 and "-1" in bad.output


def test_an_environment_key_signs_instead_and_its_predecessors_still_verify(engine, cfg, tmp_path):
    new, old = "n" * 40, "o" * 40
    own = cfg.model_copy(update={"secret_key": SecretStr(new), "previous_secret_keys": SecretStr(f"{old}, ")})
    keys = keys_of(engine, own)
    assert (keys.signing, keys.verifying, keys.source) == (new, (new, old), "environment")
    assert keys.hashing == keys_of(engine, cfg).hashing  # the hashing key stays the database's
    with engine.begin() as conn, pytest.raises(ConfigError, match="CRM_SECRET_KEY is set"):
        rotate_signing_key(conn, own, 30)
    # Too short a key, or a key written in crm.yaml, is refused with what to do.
    with pytest.raises(ConfigError, match="at least 32 characters"):
        load_settings(REPO / "crm.yaml", env={"CRM_SECRET_KEY": "short"})
    path = tmp_path / "crm-with-key.yaml"
    path.write_text("secret_key: abcdefabcdefabcdefabcdefabcdefabcdef\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must not be written in the settings file"):
        load_settings(path, env={})
    settings = load_settings(REPO / "crm.yaml", env={"CRM_SECRET_KEY": new, "CRM_SMTP_URL": "smtp://u:pw@h:25"})
    assert new not in repr(settings) and "pw@h" not in repr(settings)
