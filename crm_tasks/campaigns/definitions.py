"""Campaign definitions: one YAML file per campaign in ``campaigns/``, validated here.

A campaign is one of three kinds, so that a new campaign needs a file, not code:

- ``date_trigger``: a date in the profile (``birthday``, ``first_purchase``,
  ``created`` or a declared custom attribute such as ``attributes.warranty_end``),
  with an offset in days and a recurrence, ``once`` or ``yearly``. The birthday,
  anniversary and post-purchase thank-you campaigns are instances of it.
- ``segment``: an offer to the members of a segment, once per stay in it.
- ``segment_transition``: fires when a customer enters one segment from another
  (for example ``rfm:champions`` to ``rfm:at_risk``), from the segment history.

Every error names the file, the field and what to write instead.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import time
from decimal import Decimal
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crm_tasks.contracts import FrequencyCap
from crm_tasks.errors import ConfigError
from crm_tasks.settings import Settings

NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,47}")
TIMESTAMP_FIELDS = ("first_purchase", "created")  # instants, read as dates in the customer's time zone
DATE_FIELDS = ("birthday",)


OFFER_LATENESS_DAYS = 3  # an offer (segment, transition) may still go out up to 3 days late
# A coupon's scope as written in the campaign file -> what the issued coupon stores (coupons.CouponScope).
COUPON_SCOPES = {"any": "any", "recommended_category": "category", "recommended_product": "product"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Schedule(_Strict):
    cron: str = Field(description="When the campaign runs, as a cron expression, e.g. '0 7 * * *'.")
    timezone: str | None = Field(None, description="Time zone of the cron expression (default: crm.yaml's).")

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        if not croniter.is_valid(v):
            raise ValueError(f"'{v}' is not a cron expression; write five fields, e.g. '0 7 * * *' (07:00 daily)")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"'{v}' is not an IANA time zone (for example Asia/Kolkata)") from None
        return v


class SendWindow(_Strict):
    """Messages go out between these local times of the customer's own time zone."""

    start: time = time(9, 0)
    end: time = time(20, 0)

    @model_validator(mode="after")
    def _ordered(self) -> SendWindow:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end:%H:%M}) must be after start ({self.start:%H:%M}) on the same day")
        return self


class DateTrigger(_Strict):
    field: str = Field(description="birthday, first_purchase, created, or attributes.<a declared date attribute>")
    offset_days: int = Field(0, ge=-366, le=366, description="Send N days after the date (negative: before).")
    recurrence: Literal["once", "yearly"] = "yearly"
    # Where a 29 February date falls in a year without one.
    feb29: Literal["feb28", "mar1"] = "feb28"
    # Leave out the date's own day in yearly campaigns (a first purchase is not its own anniversary).
    min_years: int = Field(1, ge=0)


class Audience(_Strict):
    segment: str | None = Field(None, description="Members of this segment (kind segment), or a restriction.")
    from_segment: str | None = None  # segment_transition: left this segment...
    to_segment: str | None = None  # ...and entered this one
    within_days: int = Field(1, ge=1, le=366)  # transitions of the last N days (1: that day only)


class CouponSettings(_Strict):
    type: Literal["percent", "amount"] = "percent"
    value: Decimal = Field(gt=0)
    currency: str | None = None  # required for amount coupons
    valid_days: int = Field(30, ge=1, le=730)  # redeemable up to and including the send day + valid_days
    # The coupon's own landing page: the e-mail's call to action goes there instead of the shop (UTM added).
    landing_url: str | None = Field(None, max_length=500)
    # What the coupon is valid on: any purchase, or only the category / the product of the customer's first
    # recommendation (fixed at planning; a customer with no recommendation is excluded, reason
    # no_recommendation). Redemption and attribution count only purchases that match (README, "Targeted
    # coupons").
    scope: Literal["any", "recommended_category", "recommended_product"] = "any"

    @field_validator("scope", mode="before")
    @classmethod
    def _scope(cls, v):
        if not isinstance(v, str) or v not in COUPON_SCOPES:
            close = difflib.get_close_matches(str(v), COUPON_SCOPES, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(f"'{v}' is not a coupon scope; {hint}write any (every purchase, the default), "
                             "recommended_category (the category of the customer's first recommended product) "
                             "or recommended_product (that product only)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> CouponSettings:
        if self.landing_url is not None:
            from urllib.parse import urlsplit

            parts = urlsplit(self.landing_url)
            if parts.scheme != "https" or not parts.netloc:
                raise ValueError(f"landing_url {self.landing_url!r} is not an https address; write one like "
                                 "https://shop.example.com/offers/spring")
        if self.type == "percent" and self.value > 100:
            raise ValueError(f"a percent coupon cannot be worth {self.value}%; write a value up to 100")
        if self.type == "amount" and not self.currency:
            raise ValueError("an amount coupon needs a currency, for example currency: INR")
        if self.type == "percent" and self.currency:
            raise ValueError("a percent coupon has no currency; remove currency or use type: amount")
        return self


def template_name(v: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", v):
        raise ValueError(f"'{v}' must be the name of a folder in templates/email/ (lower-case letters, digits, "
                         "'_' or '-'), not a path")
    return v


class Variant(_Strict):
    """One arm of an A/B test: its own subject and/or template, mailed to ``weight`` parts of the recipients."""

    name: str = Field(description="A short name, shown in results: lower-case letters, digits and '_'.")
    weight: int = Field(1, ge=1, le=100, description="Relative share of the recipients.")
    template: str | None = Field(None, description="A template folder in templates/email/ (default: the campaign's).")
    # One text for every language, or one per language ({en: ..., hi: ...}); a language without one falls back
    # to 'en', then to the template's own subject.
    subject: str | dict[str, str] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", v):
            raise ValueError(f"variant name '{v}' must be lower-case letters, digits and '_', starting with a letter, "
                             "at most 32 characters")
        return v

    @field_validator("template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        return None if v is None else template_name(v)

    @field_validator("subject")
    @classmethod
    def _subject(cls, v):
        texts = [v] if isinstance(v, str) else list((v or {}).values())
        for t in texts:
            if not t.strip() or "\n" in t or len(t) > 300:
                raise ValueError("a variant subject is one line of 1 to 300 characters")
        return v

    def subject_for(self, lang: str) -> str | None:
        if isinstance(self.subject, str) or self.subject is None:
            return self.subject
        return self.subject.get(lang) or self.subject.get("en")


class Campaign(_Strict):
    name: str
    kind: Literal["date_trigger", "segment", "segment_transition"]
    description: str = ""
    enabled: bool = True
    template: str
    schedule: Schedule
    send_window: SendWindow = SendWindow()
    trigger: DateTrigger | None = None
    audience: Audience = Audience()
    coupon: CouponSettings | None = None
    frequency_cap: FrequencyCap | None = None  # None: crm.yaml's
    holdout_share: float = Field(0.0, ge=0, le=0.5)
    max_audience: int = Field(100_000, ge=1)
    # Circuit breaker: fail when recipients exceed this many times the previous run's...
    max_growth: float = Field(5.0, ge=1)
    # ...unless they are at most this many (small runs move a lot from day to day).
    growth_floor: int = Field(1_000, ge=0)
    # Lateness: a message not sent by the end of its send day plus this many local days is expired,
    # never sent. Default: 0 for a date trigger (a birthday e-mail is stale the next day), OFFER_LATENESS_DAYS
    # for an offer. A coupon's expiry caps it either way.
    max_lateness_days: int | None = Field(None, ge=0, le=90)
    # Success measures (crm_tasks/results): purchases this many days after a send count for it (default:
    # crm.yaml's results.attribution_days)...
    attribution_days: int | None = Field(None, ge=1, le=90)
    # ...and the global control group is never mailed; false for transactional-style messages (a receipt, a
    # warranty reminder) that every customer must get.
    global_control: bool = True
    variants: list[Variant] = []
    tags: list[str] = []

    @field_validator("template")
    @classmethod
    def _template(cls, v: str) -> str:
        return template_name(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError(f"'{v}' must be lower-case letters, digits and '_', starting with a letter, "
                             "at most 48 characters")
        return v

    @model_validator(mode="after")
    def _kind(self) -> Campaign:
        if self.kind == "date_trigger" and self.trigger is None:
            raise ValueError("kind date_trigger needs a trigger: {field: birthday, offset_days: 0, recurrence: yearly}")
        if self.kind != "date_trigger" and self.trigger is not None:
            raise ValueError(f"kind {self.kind} takes no trigger; remove it or use kind: date_trigger")
        if self.kind == "segment" and not self.audience.segment:
            raise ValueError("kind segment needs audience.segment, for example audience: {segment: lifecycle:at_risk}")
        if self.kind == "segment_transition" and not (self.audience.from_segment and self.audience.to_segment):
            raise ValueError("kind segment_transition needs audience.from_segment and audience.to_segment")
        if self.kind != "segment_transition" and (self.audience.from_segment or self.audience.to_segment):
            raise ValueError("from_segment/to_segment belong to kind segment_transition")
        names = [v.name for v in self.variants]
        if len(names) == 1:
            raise ValueError("variants: an A/B test needs at least two variants (or remove variants:)")
        if len(set(names)) != len(names):
            raise ValueError(f"variants: names must differ, got {', '.join(names)}")
        return self

    @property
    def segment_names(self) -> list[str]:
        a = self.audience
        return [n for n in (a.segment, a.from_segment, a.to_segment) if n]

    @property
    def lateness_days(self) -> int:
        if self.max_lateness_days is not None:
            return self.max_lateness_days
        return 0 if self.kind == "date_trigger" else OFFER_LATENESS_DAYS

    def occurrence_unit(self) -> str:
        """What one occurrence is, for the idempotency key: a year, a date, or a segment entry."""
        if self.trigger is not None:
            return "year" if self.trigger.recurrence == "yearly" else "date"
        return "entry"


@dataclass(frozen=True)
class CampaignProblem:
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


def _fix_for(loc: tuple, msg: str, model: type[BaseModel] | None) -> str:
    """A hint for an unknown field: the nearest allowed name."""
    if msg.startswith("Extra inputs") and loc:
        allowed = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        if close:
            return f"unknown field; did you mean '{close[0]}'?"
        return f"unknown field; allowed: {', '.join(allowed)}"
    return msg.removeprefix("Value error, ")


_SECTIONS: dict[str, type[BaseModel]] = {
    "schedule": Schedule, "send_window": SendWindow, "trigger": DateTrigger, "audience": Audience,
    "coupon": CouponSettings, "frequency_cap": FrequencyCap, "variants": Variant,
}


def parse_campaign(path: Path, cfg: Settings) -> Campaign:
    """One campaign file, validated against the schema and this deployment's fields and templates."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}: expected a mapping of campaign settings (name:, kind:, ...)")
    try:
        campaign = Campaign(**data)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            loc = tuple(e["loc"])
            model = _SECTIONS.get(str(loc[0])) if len(loc) > 1 else Campaign
            where = ".".join(str(p) for p in loc) or "(top level)"
            problems.append(f"{where}: {_fix_for(loc, e['msg'], model)}")
        raise ConfigError(f"{path.name}: " + "; ".join(problems)) from None
    if campaign.name != path.stem:
        raise ConfigError(f"{path.name}: name '{campaign.name}' must match the file name; rename the file to "
                          f"{campaign.name}.yaml or set name: {path.stem}")
    _check_against(campaign, path.name, cfg)
    return campaign


def date_fields(cfg: Settings) -> list[str]:
    """The fields a date trigger can name in this deployment."""
    custom = [f"attributes.{a.name}" for a in cfg.custom_attributes if a.type == "date"]
    return [*DATE_FIELDS, *TIMESTAMP_FIELDS, *custom]


def _check_against(campaign: Campaign, file: str, cfg: Settings) -> None:
    if campaign.trigger is not None:
        fields = date_fields(cfg)
        if campaign.trigger.field not in fields:
            close = difflib.get_close_matches(campaign.trigger.field, fields, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"{file}: trigger.field: '{campaign.trigger.field}' is not a date field; {hint}"
                              f"use one of {', '.join(fields)} (declare custom dates in crm.yaml "
                              "custom_attributes)")
    for where, template in [("template", campaign.template),
                            *((f"variants.{v.name}.template", v.template) for v in campaign.variants if v.template)]:
        folder = cfg.campaigns.templates / template
        missing = [p for p in ("subject.txt", "body.html", "body.txt") if not (folder / p).is_file()]
        if missing:
            raise ConfigError(f"{file}: {where}: '{template}' needs {', '.join(missing)} in "
                              f"{folder}; create them or name an existing template folder")


def load_campaigns(cfg: Settings, folder: Path | None = None) -> tuple[list[Campaign], list[CampaignProblem]]:
    """Every campaign file of the folder, by name; a broken file is a problem, not an exception."""
    folder = folder or cfg.campaigns.folder
    campaigns: list[Campaign] = []
    problems: list[CampaignProblem] = []
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        try:
            campaigns.append(parse_campaign(path, cfg))
        except ConfigError as exc:
            problems.append(CampaignProblem(path.name, str(exc).removeprefix(f"{path.name}: ")))
    return campaigns, problems


def get_campaign(cfg: Settings, name: str) -> Campaign:
    """The campaign named ``name``; the error lists the known ones."""
    path = cfg.campaigns.folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in cfg.campaigns.folder.glob("*.yaml")) if cfg.campaigns.folder.is_dir() else []
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"no campaign '{name}' in {cfg.campaigns.folder}.{hint} Known: {', '.join(known) or 'none'}")
    return parse_campaign(path, cfg)
