"""Settings: file, environment, and errors that name the file and the field."""

from __future__ import annotations

import pytest

from crm_tasks.errors import ConfigError
from crm_tasks.settings import load_settings, normalise_url


def test_environment_overrides_the_file(tmp_path):
    f = tmp_path / "crm.yaml"
    f.write_text("timezone: Asia/Tehran\nreject_threshold: 0.1\n")
    s = load_settings(f, env={"CRM_REJECT_THRESHOLD": "0.2"})
    assert s.timezone == "Asia/Tehran" and s.reject_threshold == 0.2


@pytest.mark.parametrize(
    "text, message",
    [
        ("timezone: Mars/Base\n", "timezone: Value error, 'Mars/Base' is not an IANA time zone"),
        ("default_locale: xx-QQ\n", "'xx-QQ' is not a known BCP 47 locale"),
        ("custom_attributes:\n  - {name: email, type: text}\n", "'email' is already a contract column"),
        ("custom_attributes:\n  - {name: size, type: colour}\n", "custom_attributes.0.type"),
        ("- just\n- a list\n", "expected a mapping"),
        ("reject_threshold: [\n", "not valid YAML"),
    ],
)
def test_bad_configuration_names_file_and_field(tmp_path, text, message):
    f = tmp_path / "crm.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(f, env={})
    assert str(f) in str(err.value) and message in str(err.value)


def test_missing_named_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(env={"CRM_CONFIG": str(tmp_path / "nope.yaml")})


def test_airflow_style_urls_get_the_psycopg_driver():
    assert normalise_url("postgres://u:p@h:5432/crm") == "postgresql+psycopg://u:p@h:5432/crm"
    assert normalise_url("sqlite:////x/crm.db") == "sqlite:////x/crm.db"




def test_secrets_never_appear_in_a_repr():
    from crm_tasks.delivery.smtp import parse_smtp_url

    cfg = load_settings(env={"CRM_SECRET_KEY": "k" * 40,
                             "CRM_SMTP_URL": "smtp://mailer:hunter2-secret@smtp.example.com:587",
                             "CRM_DATABASE_URL": "postgresql+psycopg://crm:db-password-9@db/crm"})
    shown = repr(cfg) + str(cfg)
    for secret in ("k" * 40, "hunter2-secret", "db-password-9"):
        assert secret not in shown
    target = parse_smtp_url(cfg.smtp_url)
    assert target.password == "hunter2-secret"  # still there to log in with
    assert "hunter2-secret" not in repr(target) and "hunter2-secret" not in target.describe()


def test_the_bounce_mailbox_and_the_mailgun_key_come_from_the_environment_only(tmp_path):
    url = "imaps://bounces:imap-pass-7@imap.example.com"
    cfg = load_settings(env={"CRM_BOUNCE_IMAP_URL": url, "CRM_MAILGUN_SIGNING_KEY": "mg-signing-key-9"})
    assert cfg.bounce_imap_url == url and cfg.mailgun_signing_key.get_secret_value() == "mg-signing-key-9"
    assert "imap-pass-7" not in repr(cfg) + str(cfg) and "mg-signing-key-9" not in repr(cfg) + str(cfg)
    for key, var in (("bounce_imap_url", "CRM_BOUNCE_IMAP_URL"), ("mailgun_signing_key", "CRM_MAILGUN_SIGNING_KEY")):
        f = tmp_path / f"{key}.yaml"
        f.write_text(f"{key}: something\n")
        with pytest.raises(ConfigError, match=f"{key} must not be written in the settings file.*set {var}"):
            load_settings(f, env={})
    f = tmp_path / "typo.yaml"
    f.write_text("delivery:\n  feedback:\n    confirm_sns_subscription: true\n")  # misspelt: never silently off
    with pytest.raises(ConfigError, match="delivery.feedback.confirm_sns_subscription"):
        load_settings(f, env={})
