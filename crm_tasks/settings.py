"""One typed Settings object, read by the CLI, the DAGs, Alembic and the tests.

Precedence, highest first: environment variables, the YAML file named by
``CRM_CONFIG`` (default ``<repo>/crm.yaml``), built-in defaults.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pycountry
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from crm_tasks.contracts import CustomAttribute, FrequencyCap
from crm_tasks.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]


class LifecycleRules(BaseModel):
    """Thresholds of the lifecycle stages, in days (see crm_tasks/segments/compute.py)."""

    new_days: int = Field(30, ge=1)  # first order fewer than this many days ago: new
    churn_days: int = Field(180, ge=2)  # no order for this many days: churned
    at_risk_factor: float = Field(2.0, gt=0)  # silent for longer than this many usual gaps: at risk
    at_risk_min_days: int = Field(30, ge=1)  # ...and for more than this many days
    single_order_gap_days: int = Field(60, ge=1)  # the "usual gap" of a customer with one order

    @model_validator(mode="after")
    def _ordered(self) -> LifecycleRules:
        if self.churn_days <= self.new_days:
            raise ValueError(f"churn_days ({self.churn_days}) must be greater than new_days ({self.new_days})")
        return self


class SegmentSettings(BaseModel):
    folder: Path = REPO_ROOT / "segments"  # custom segment definitions, one YAML file each
    # Segments compare customers across currencies in this one, at these fixed planning
    # rates (units of the base currency per unit): a segment must not move because a
    # market rate did. A currency without a rate stops the run with its name.
    base_currency: str = "INR"
    exchange_rates: dict[str, Decimal] = {"INR": Decimal(1)}
    # RFM frequency and monetary over the last N days (None: all history).
    window_days: int | None = Field(None, ge=1)
    high_value_share: float = Field(0.10, gt=0, lt=1)
    lifecycle: LifecycleRules = LifecycleRules()

    @field_validator("folder")
    @classmethod
    def _folder(cls, v: Path) -> Path:
        return v if v.is_absolute() else REPO_ROOT / v

    @field_validator("exchange_rates")
    @classmethod
    def _rates(cls, v: dict[str, Decimal]) -> dict[str, Decimal]:
        known = {c.alpha_3 for c in pycountry.currencies}
        for code, rate in v.items():
            if code not in known:
                raise ValueError(f"'{code}' is not an ISO 4217 currency code")
            if rate <= 0:
                raise ValueError(f"the rate of {code} must be positive, got {rate}")
        return v

    @model_validator(mode="after")
    def _base(self) -> SegmentSettings:
        if self.exchange_rates.get(self.base_currency) != 1:
            raise ValueError(f"exchange_rates must give the base currency {self.base_currency} the rate 1")
        return self


class Sender(BaseModel):
    name: str = "Rewards Club"
    email: str = "rewards@example.com"
    # Marketing mail must carry the sender's postal address (CAN-SPAM, and good manners elsewhere).
    postal_address: str = "Rewards Club, 1 Market Street, Bengaluru 560001, India"

    @property
    def domain(self) -> str:
        """The sender address's domain: Message-IDs and List-Ids are under it."""
        return self.email.rsplit("@", 1)[-1]


class TrackingSettings(BaseModel):
    """Click and open tracking of campaign e-mails (crm_tasks/delivery/clicks.py; README "Click tracking")."""

    model_config = ConfigDict(extra="forbid")  # a misspelt switch must not silently stay on

    clicks: bool = True  # the HTML part's links go through a signed redirect that counts them
    # A pixel that counts opens. Off: Apple Mail Privacy Protection and image proxies fetch it for every
    # message delivered, and clients that block images hide real opens, so the count misleads either way.
    opens: bool = False
    # The public prefix of the CRM app (the plugin's /crm): links become <base_url>/r/<token>, the pixel
    # <base_url>/o/<token>.gif. Empty: the unsubscribe URL without its last segment, since the same app
    # serves both (https://crm.example.com/crm/unsubscribe -> https://crm.example.com/crm).
    base_url: str | None = None

    @field_validator("base_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if not v:
            return None  # empty: derived from the unsubscribe URL
        if not re.fullmatch(r"https?://[^\s?#\"'<>]+", v):
            raise ValueError("must be an http(s) URL without query or fragment, for example https://crm.example.com/crm")
        return v.rstrip("/")


class CampaignSettings(BaseModel):
    folder: Path = REPO_ROOT / "campaigns"  # campaign definitions, one YAML file each
    templates: Path = REPO_ROOT / "templates" / "email"
    sender: Sender = Sender()
    # The one-click unsubscribe endpoint; a signed token per customer is appended.
    unsubscribe_url: str = "https://crm.example.com/unsubscribe"
    brand_color: str = Field("#0b6e4f", pattern=r"^#[0-9a-fA-F]{6}$")
    # The template languages; every other customer locale falls back to the first.
    locales: list[str] = ["en", "hi", "te", "fa", "ur"]
    frequency_cap: FrequencyCap = FrequencyCap()  # a campaign may set its own
    # Products shown in an e-mail: the first of the customer's stored recommendations (customer_recommendations);
    # for a customer without a list, the best sellers of their favourite category over recommendation_days.
    recommendations: int = Field(3, ge=0, le=10)
    recommendation_days: int = Field(90, ge=1)
    # The shop every e-mail's call to action links to (a coupon with a landing page links there instead);
    # shop links carry utm_source=<utm_source>, utm_medium=email, utm_campaign and utm_content (the A/B variant).
    shop_url: str = "https://shop.example.com/"
    utm_source: str = Field("crm", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    tracking: TrackingSettings = TrackingSettings()
    # Processes that build and render a large plan's messages (each at least 5,000 of them); 0: one per core.
    render_processes: int = Field(0, ge=0, le=64)

    @field_validator("folder", "templates")
    @classmethod
    def _relative(cls, v: Path) -> Path:
        return v if v.is_absolute() else REPO_ROOT / v

    @field_validator("shop_url")
    @classmethod
    def _shop(cls, v: str) -> str:
        if not re.fullmatch(r"https://[^\s/?#\"'<>]+(/[^\s#\"'<>]*)?", v):
            raise ValueError("must be an https URL, for example https://shop.example.com/ (links in e-mails are "
                             "https only)")
        return v

    @field_validator("unsubscribe_url")
    @classmethod
    def _https(cls, v: str) -> str:
        if not re.fullmatch(r"https?://[^\s?#]+", v):
            raise ValueError("must be an http(s) URL without query or fragment, for example "
                             "https://crm.example.com/unsubscribe")
        return v.rstrip("/")


class DeliverySettings(BaseModel):
    """How planned messages are sent (crm_tasks/delivery/send.py); the SMTP server itself is CRM_SMTP_URL or
    the Airflow connection smtp_default, never this file."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(1000, ge=1, le=100_000)  # messages per mapped send task
    connections: int = Field(4, ge=1, le=64)  # reused SMTP connections per send task
    checkpoint: int = Field(50, ge=1, le=10_000)  # messages gated as 'sending' per ledger commit
    # A batch's messages rendered and built in a forked process beside its SMTP connections (where the process
    # may fork); False: in the sending process, between the connections' replies.
    build_process: bool = True
    rate_per_second: float | None = Field(None, gt=0)  # provider quotas, per send task
    rate_per_hour: int | None = Field(None, ge=1)
    timeout_seconds: float = Field(30, gt=0)  # per SMTP command
    max_attempts: int = Field(5, ge=1)  # temporary failures before a message fails for good
    retry_seconds: float = Field(300, ge=0)  # wait after the first temporary failure...
    retry_factor: float = Field(4.0, ge=1)  # ...multiplied by this after each further one
    max_retry_seconds: float = Field(6 * 3600, ge=0)
    # A deferred message due again within this many seconds is retried by the same task.
    inline_retry_seconds: float = Field(60, ge=0)
    soft_bounce_limit: int = Field(3, ge=1)  # temporary recipient failures in a row that suppress an address
    # A claim older than this, by a sender that cannot be seen to be alive, is taken over.
    claim_timeout_seconds: float = Field(900, ge=1)
    # Send tasks of one campaign running at once (Airflow's max_active_tis_per_dag, across its runs).
    parallel_sends: int = Field(4, ge=1, le=64)
    # An Airflow pool shared by every campaign's send tasks, to cap SMTP concurrency across campaigns;
    # None: Airflow's default_pool, which exists everywhere. A named pool that does not exist yet is
    # created with parallel_sends slots when the scheduler starts (the CRM plugin), never waited on.
    pool: str | None = None
    unsubscribe_mailto: str | None = "unsubscribe@example.com"  # List-Unsubscribe's mailto address
    # Late bounces and complaints. A factory, because FeedbackSettings is defined further down.
    feedback: FeedbackSettings = Field(default_factory=lambda: FeedbackSettings())


class FeedbackSettings(BaseModel):
    """Delivery feedback after the send (crm_tasks/delivery/feedback.py; README "Late bounces and complaints"):
    the bounce mailbox the crm_bounces DAG reads, and the providers' webhooks. The mailbox's address and the
    webhook secrets are never here: CRM_BOUNCE_IMAP_URL (or the Airflow connection crm_bounces) and
    CRM_MAILGUN_SIGNING_KEY."""

    model_config = ConfigDict(extra="forbid")

    folder: str = "INBOX"  # where the reports arrive
    processed_folder: str = "crm-processed"  # a report is moved here once its events are committed
    unparsed_folder: str = "crm-unparsed"  # what is not a report this engine reads waits here for a person
    # A local maildir instead of IMAP (the mail server delivers to this machine); empty: IMAP.
    maildir: Path | None = None
    batch: int = Field(200, ge=1, le=1000)  # reports recorded per commit, then moved (UIDs per IMAP command)
    # A webhook request body larger than this gets 413 before any of it is parsed (SES notifications with
    # their original headers stay under 30 KiB).
    webhook_max_bytes: int = Field(64 * 1024, ge=1024, le=1024 * 1024)
    # The Amazon SNS topics (ARNs) whose notifications are accepted: a valid SNS signature only proves that
    # some AWS account's topic sent it. Empty: /webhooks/ses accepts nothing.
    ses_topic_arns: list[str] = []
    # The only hosts SNS signing certificates are fetched from (https, path ending in .pem).
    sns_cert_host: str = r"sns\.[a-z0-9-]+\.amazonaws\.com"
    # Confirm an SNS subscription of an accepted topic by fetching its SubscribeURL. Off: the request is
    # logged and an admin confirms the subscription in the AWS console.
    confirm_sns_subscriptions: bool = False
    # Mailgun: a request signed longer ago (or further ahead) than this is refused as a replay.
    webhook_max_age_seconds: int = Field(300, ge=30, le=3600)

    @field_validator("maildir")
    @classmethod
    def _relative(cls, v: Path | None) -> Path | None:
        return v if v is None or v.is_absolute() else REPO_ROOT / v

    @field_validator("sns_cert_host")
    @classmethod
    def _pattern(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return v


# --- cleanup (crm_tasks/cleanup/archive.py) -------------------------------------------------------


class CleanupRules(BaseModel):
    """Which rules a cleanup run applies; each archived or merged profile gets one named reason."""

    model_config = ConfigDict(extra="forbid")  # a misspelt rule must not silently stay on

    inactive: bool = True  # no purchase and no profile update for inactive_months
    hard_bounce: bool = True  # the address hard-bounced and there is no phone
    no_contact: bool = True  # neither an e-mail address nor a phone
    duplicates: bool = True  # same e-mail address or phone: merged into one surviving profile


class CleanupSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: CleanupRules = CleanupRules()
    inactive_months: int = Field(24, ge=1)
    # Freshness figure: a kept profile silent for this many months is "at risk" of going stale.
    at_risk_months: int = Field(18, ge=1)
    # Archived profiles are restorable for this many days, then their personal data is purged.
    grace_days: int = Field(30, ge=1)
    # A run that would archive (or merge away) more than this share of all profiles fails, changing nothing.
    max_archive_share: float = Field(0.10, gt=0, le=1)
    # More profiles than this sharing one address or phone is a placeholder, not a person: not merged.
    max_duplicate_group: int = Field(10, ge=2)
    examples: int = Field(5, ge=0, le=100)  # customer ids listed per reason in the report

    @model_validator(mode="after")
    def _ordered(self) -> CleanupSettings:
        if self.at_risk_months >= self.inactive_months:
            raise ValueError(f"at_risk_months ({self.at_risk_months}) must be less than inactive_months "
                             f"({self.inactive_months})")
        return self


class ClvSettings(BaseModel):
    """Customer lifetime value (crm_tasks/analytics/clv.py; README "Customer lifetime value")."""

    model_config = ConfigDict(extra="forbid")

    # An L2 penalty on the models' log-parameters (lifetimes' penalizer_coef): 0 is the published fit; a
    # small one (0.001) helps a fit that does not converge, at the price of a slight pull towards 1.
    penalizer: float = Field(0.0, ge=0, le=10)
    # A fit that does not converge (typically when everyone drops out at nearly the same rate and a, b run
    # off to infinity) is tried once more with this penalizer, recorded in the fit's params; null: fail.
    retry_penalizer: float | None = Field(0.001, gt=0, le=10)
    discount_rate: float = Field(0.01, ge=0, lt=1)  # per month, for the 12-month CLV
    # Below this many buyers, or this many with a repeat purchase day, no fit: "not enough data".
    min_customers: int = Field(100, ge=10)
    min_repeat_customers: int = Field(20, ge=5)
    # Above this |correlation| between repeat purchase days and their mean value, the Gamma-Gamma model's
    # independence assumption is doubtful: the fit is kept and the log and params say so.
    max_correlation: float = Field(0.3, gt=0, le=1)


class ResultsSettings(BaseModel):
    """How campaign success is measured (crm_tasks/results); the README's "Success measures" explains each."""

    model_config = ConfigDict(extra="forbid")

    attribution_days: int = Field(7, ge=1, le=90)  # a campaign may set its own
    # This share of all customers, chosen by a stable hash, gets no marketing campaign (unless the campaign
    # sets global_control: false): the programme's total lift is measured against them. 0 turns it off.
    global_control_share: float = Field(0.05, ge=0, le=0.5)
    control_months: int = Field(12, ge=1, le=60)  # months of the control-group report
    # Below these sizes a lift is "not enough data yet": the normal approximations behind the intervals
    # do not hold, and a number would mean nothing.
    min_group: int = Field(100, ge=10)
    min_converters: int = Field(10, ge=1)
    bootstrap_resamples: int = Field(2000, ge=200, le=100_000)


class ForecastSettings(BaseModel):
    """The daily revenue forecast (crm_tasks/analytics/forecast.py; README "Revenue forecast")."""

    model_config = ConfigDict(extra="forbid")

    horizon_days: int = Field(90, ge=7, le=366)  # days forecast after the fit date
    history_days: int = Field(730, ge=56, le=3660)  # days of purchases the model sees, at most
    # Below this many days from the first purchase: "not enough data", no forecast (two seasons of a week
    # are too few to tell a weekday's pattern from noise).
    min_history_days: int = Field(56, ge=28)
    # Rolling-origin backtest: this many weekly origins, each forecasting 28 days it did not see.
    backtest_weeks: int = Field(8, ge=1, le=52)
    simulations: int = Field(1000, ge=200, le=20_000)  # sample paths for the 7/30/90-day totals' intervals
    # "Better than seasonal naive" needs errors at least this share below its errors: a tie is not better.
    margin: float = Field(0.02, ge=0, lt=1)


class RecommendationSettings(BaseModel):
    """Product recommendations (crm_tasks/analytics/recommendations.py; README "Recommendations")."""

    model_config = ConfigDict(extra="forbid")

    # Orders in this many days up to the as-of date make the co-purchase statistics and "already bought".
    window_days: int = Field(365, ge=7, le=3660)
    # Customers who bought both, below which a pair is noise: no statistics, no cross-sell.
    min_support: int = Field(3, ge=1)
    per_customer: int = Field(10, ge=1, le=50)  # products in each customer's list
    up_sell: int = Field(1, ge=0, le=10)  # of which at most this many up-sells
    # Each product's best complements, each category's and the shop's best sellers that are candidates:
    # what bounds a night's work per customer.
    pool: int = Field(20, ge=1, le=500)
    # A product shown to a customer (recommendation_impressions) is not recommended again for this many days.
    recent_days: int = Field(30, ge=0, le=365)

    @model_validator(mode="after")
    def _slots(self) -> RecommendationSettings:
        if self.up_sell > self.per_customer:
            raise ValueError(f"up_sell ({self.up_sell}) cannot exceed per_customer ({self.per_customer})")
        return self


class Settings(BaseModel):
    # These three may hold passwords or keys: never in a repr, a log line or a traceback.
    database_url: str | None = Field(None, repr=False)
    landing_dir: Path = REPO_ROOT / "var" / "landing"
    # Where `crm preview` writes rendered messages, and where erasure deletes a person's: one place for both.
    preview_dir: Path = REPO_ROOT / "var" / "preview"
    timezone: str = "Asia/Kolkata"
    ingest_hour: int = Field(2, ge=0, le=23)
    reject_threshold: float = Field(0.05, ge=0.0, le=1.0)
    # A handful of bad rows in a tiny file is not a broken export: below this many
    # rejected rows a file is never rejected as a whole.
    reject_min_rows: int = Field(10, ge=0)
    # A night with no partition of any source did nothing: an ingest error, unless exports may skip
    # this many nights in a row (weekends, holidays), which are then warnings in the report.
    missing_partition_grace: int = Field(0, ge=0)
    default_locale: str = "en-IN"
    chunk_rows: int = Field(100_000, ge=1_000)
    custom_attributes: list[CustomAttribute] = []
    segments: SegmentSettings = SegmentSettings()
    campaigns: CampaignSettings = CampaignSettings()
    cleanup: CleanupSettings = CleanupSettings()
    delivery: DeliverySettings = DeliverySettings()
    results: ResultsSettings = ResultsSettings()
    clv: ClvSettings = ClvSettings()
    forecast: ForecastSettings = ForecastSettings()
    recommendations: RecommendationSettings = RecommendationSettings()
    # The SMTP server: smtp[s]://user:password@host:port (see crm_tasks/delivery/smtp.py). Environment only
    # (CRM_SMTP_URL), since it holds a password; inside Airflow the connection smtp_default also works.
    smtp_url: str | None = Field(None, repr=False)
    # The bounce mailbox, imaps://user:password@host:993 (crm_tasks/delivery/bounce_mailbox.py). Environment
    # only (CRM_BOUNCE_IMAP_URL); inside Airflow the connection crm_bounces also works.
    bounce_imap_url: str | None = Field(None, repr=False)
    # Mailgun's webhook signing key (CRM_MAILGUN_SIGNING_KEY, environment only): /webhooks/mailgun checks it.
    mailgun_signing_key: SecretStr | None = Field(None, repr=False)
    # Signs links instead of the random key `crm db upgrade` stores in the database (crm_tasks/store/keys.py).
    # Optional, and only from the environment (CRM_SECRET_KEY), never from crm.yaml; the previous ones
    # (CRM_PREVIOUS_SECRET_KEYS, comma-separated) still verify links sent before it changed.
    secret_key: SecretStr | None = Field(None, repr=False)
    previous_secret_keys: SecretStr | None = Field(None, repr=False)

    @field_validator("secret_key")
    @classmethod
    def _strong(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 32:
            raise ValueError("CRM_SECRET_KEY must be a random value of at least 32 characters (for example: "
                             "python -c 'import secrets; print(secrets.token_hex(32))'), or unset to use the "
                             "key `crm db upgrade` generated in the CRM database")
        return v

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
    "CRM_PREVIEW_DIR": "preview_dir",
    "CRM_TIMEZONE": "timezone",
    "CRM_REJECT_THRESHOLD": "reject_threshold",
    "CRM_REJECT_MIN_ROWS": "reject_min_rows",
    "CRM_DEFAULT_LOCALE": "default_locale",
    "CRM_CHUNK_ROWS": "chunk_rows",
    "CRM_SECRET_KEY": "secret_key",
    "CRM_PREVIOUS_SECRET_KEYS": "previous_secret_keys",
    "CRM_SMTP_URL": "smtp_url",
    "CRM_BOUNCE_IMAP_URL": "bounce_imap_url",
    "CRM_MAILGUN_SIGNING_KEY": "mailgun_signing_key",
}
_SEGMENT_ENV = {"CRM_SEGMENTS_DIR": "folder"}
_CAMPAIGN_ENV = {"CRM_CAMPAIGNS_DIR": "folder", "CRM_TEMPLATES_DIR": "templates",
                 "CRM_UNSUBSCRIBE_URL": "unsubscribe_url"}


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
    for var, field in _SEGMENT_ENV.items():
        if env.get(var):
            data["segments"] = {**(data.get("segments") or {}), field: env[var]}
    for var, field in _CAMPAIGN_ENV.items():
        if env.get(var):
            data["campaigns"] = {**(data.get("campaigns") or {}), field: env[var]}
    for key in ("secret_key", "previous_secret_keys"):
        if key in data and not env.get(f"CRM_{key.upper()}"):
            raise ConfigError(f"{path}: {key} must not be written in the settings file; set CRM_{key.upper()}, "
                              "or leave it unset to use the key `crm db upgrade` generated in the CRM database")
    if "smtp_url" in data and not env.get("CRM_SMTP_URL"):
        raise ConfigError(f"{path}: smtp_url must not be written in the settings file (it holds a password); "
                          "set CRM_SMTP_URL or the Airflow connection smtp_default")
    for key, where in (("bounce_imap_url", "CRM_BOUNCE_IMAP_URL or the Airflow connection crm_bounces"),
                       ("mailgun_signing_key", "CRM_MAILGUN_SIGNING_KEY")):
        if key in data and not env.get(where.split()[0]):
            raise ConfigError(f"{path}: {key} must not be written in the settings file (it holds a secret); "
                              f"set {where}")
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
