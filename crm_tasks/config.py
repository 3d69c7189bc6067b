"""One typed Settings object, read by the CLI, the DAGs, Alembic and the tests.

Precedence, highest first: environment variables, the YAML file named by
``CRM_CONFIG`` (default ``<repo>/crm.yaml``), built-in defaults.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from crm_tasks.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]

AttributeType = Literal["date", "number", "text", "boolean"]

# Names of the contract's own columns: a custom attribute may not shadow them.
CUSTOMER_COLUMNS = (
    "customer_id", "first_name", "last_name", "email", "phone", "birthday", "locale",
    "timezone", "country", "email_consent", "created_at", "updated_at",
)
PURCHASE_COLUMNS = (
    "transaction_id", "customer_id", "purchased_at", "amount", "currency", "store_id",
    "sku", "category", "quantity", "coupon_code",
)


class CustomAttribute(BaseModel):
    name: str
    type: AttributeType
    description: str = ""

    @field_validator("name")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", v):
            raise ValueError("must be lower-case letters, digits and '_', starting with a letter")
        if v in CUSTOMER_COLUMNS:
            raise ValueError(f"'{v}' is already a contract column")
        return v


class Settings(BaseModel):
    database_url: str | None = None
    landing_dir: Path = REPO_ROOT / "var" / "landing"
    timezone: str = "Asia/Kolkata"
    ingest_hour: int = Field(2, ge=0, le=23)
    reject_threshold: float = Field(0.05, ge=0.0, le=1.0)
    # A handful of bad rows in a tiny file is not a broken export: below this many
    # rejected rows a file is never rejected as a whole.
    reject_min_rows: int = Field(10, ge=0)
    default_locale: str = "en-IN"
    chunk_rows: int = Field(100_000, ge=1_000)
    custom_attributes: list[CustomAttribute] = []

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"'{v}' is not an IANA time zone (for example Asia/Kolkata)") from None
        return v

    @field_validator("default_locale")
    @classmethod
    def _locale(cls, v: str) -> str:
        import babel

        try:
            babel.Locale.parse(v.replace("_", "-"), sep="-")
        except (ValueError, TypeError, babel.UnknownLocaleError):
            raise ValueError(f"'{v}' is not a known BCP 47 locale (for example en-IN)") from None
        return v

    @field_validator("custom_attributes")
    @classmethod
    def _unique(cls, v: list[CustomAttribute]) -> list[CustomAttribute]:
        names = [a.name for a in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"declared more than once: {', '.join(dupes)}")
        return v

    @property
    def default_database_url(self) -> str:
        return f"sqlite:///{REPO_ROOT / 'var' / 'crm.db'}"

    def resolved_database_url(self, airflow_url: str | None = None) -> str:
        """CRM_DATABASE_URL, else the Airflow connection ``crm_db``, else embedded SQLite."""
        return normalise_url(self.database_url or airflow_url or self.default_database_url)


_ENV = {
    "CRM_DATABASE_URL": "database_url",
    "CRM_LANDING_DIR": "landing_dir",
    "CRM_TIMEZONE": "timezone",
    "CRM_REJECT_THRESHOLD": "reject_threshold",
    "CRM_REJECT_MIN_ROWS": "reject_min_rows",
    "CRM_DEFAULT_LOCALE": "default_locale",
    "CRM_CHUNK_ROWS": "chunk_rows",
}


def normalise_url(url: str) -> str:
    """Accept Airflow-style ``postgres://`` URIs and pin the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def load_settings(config_path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    path = Path(config_path or env.get("CRM_CONFIG") or REPO_ROOT / "crm.yaml")
    data: dict = {}
    if path.exists():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    elif config_path or env.get("CRM_CONFIG"):
        raise ConfigError(f"{path}: configuration file not found (set CRM_CONFIG to an existing file)")
    for var, field in _ENV.items():
        if env.get(var):
            data[field] = env[var]
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path}: invalid settings: {problems}") from None


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process-wide settings; tests build their own with ``load_settings``."""
    return load_settings()
