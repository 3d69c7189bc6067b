"""Vectorised standardisation and validation of landing rows.

Every function takes Arrow string columns (one value per input row) and returns
cleaned values for all rows plus, through ``Reasons``, a readable reason for each
row that must be quarantined. The heavy lifting is in Arrow's C++ kernels and
pandas; Python loops only over the rare values that need a registry lookup
(phone numbers, unusual e-mail addresses, distinct locales).

Reasons never quote personal data (names, e-mail, phone, birthday): they end
up in logs and task failures. They do quote codes, amounts and timestamps.
"""

from __future__ import annotations

import unicodedata
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from zoneinfo import available_timezones

import babel
import babel.numbers
import email_validator
import numpy as np
import pandas as pd
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
import pycountry

from crm_tasks.contracts import PRODUCT_NAME_LOCALES, CustomAttribute


class Reasons:
    """Collects '; '-joined reasons per row."""

    def __init__(self, n: int) -> None:
        self.text = np.full(n, "", dtype=object)

    def add(self, mask: np.ndarray, message: str | np.ndarray) -> None:
        if not mask.any():
            return
        msg = message[mask] if isinstance(message, np.ndarray) else message
        current = self.text[mask]
        self.text[mask] = np.where(current == "", msg, current + "; " + msg)

    def add_quoting(self, mask: np.ndarray, name: str, values: pa.Array, problem: str) -> None:
        """Add "<name> '<value>' <problem>", quoting the value (cut to 40 characters).

        Only for fields that hold no personal data. Values are read for the masked rows only.
        """
        if not mask.any():
            return
        picked = values.take(pa.array(np.flatnonzero(mask))).to_pylist()
        message = np.full(len(mask), "", dtype=object)
        message[mask] = [f"{name} '{v[:40]}' {problem}" for v in picked]
        self.add(mask, message)

    @property
    def bad(self) -> np.ndarray:
        return self.text != ""


def _np(arr: pa.Array) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False)


def _mask(arr: pa.Array) -> np.ndarray:
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False)


def clean_text(arr: pa.Array) -> pa.Array:
    """Trim white space and bring non-ASCII values to Unicode NFC."""
    arr = pc.utf8_trim_whitespace(arr)
    non_ascii = ~_mask(pc.string_is_ascii(arr))
    if non_ascii.any():
        values = _np(arr).copy()
        values[non_ascii] = [unicodedata.normalize("NFC", v) for v in values[non_ascii]]
        arr = pa.array(values, type=pa.string())
    return arr


def empty(arr: pa.Array) -> np.ndarray:
    return _mask(pc.equal(pc.utf8_length(arr), 0))


_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"


def require(reasons: Reasons, name: str, arr: pa.Array, max_len: int, required: bool = True) -> None:
    if required:
        reasons.add(empty(arr), f"{name} is missing")
    reasons.add(_mask(pc.greater(pc.utf8_length(arr), max_len)), f"{name} is longer than {max_len} characters")
    # A NUL byte or other control character is never data; PostgreSQL refuses NUL outright.
    reasons.add(_mask(pc.match_substring_regex(arr, _CONTROL)), f"{name} contains control characters")


# --- registries ---------------------------------------------------------------


@lru_cache(maxsize=1)
def currency_precision() -> dict[str, int]:
    """ISO 4217 codes in use, with their minor-unit digits (CLDR's, via Babel)."""
    return {c.alpha_3: babel.numbers.get_currency_precision(c.alpha_3) for c in pycountry.currencies}


@lru_cache(maxsize=1)
def country_codes() -> frozenset[str]:
    return frozenset(c.alpha_2 for c in pycountry.countries)


@lru_cache(maxsize=1)
def timezones() -> frozenset[str]:
    return frozenset(available_timezones())


@lru_cache(maxsize=4096)
def canonical_locale(tag: str) -> str | None:
    """A BCP 47 tag known to CLDR, in canonical case ('hi-in' -> 'hi-IN'), else None."""
    try:
        loc = babel.Locale.parse(tag.replace("_", "-"), sep="-")
    except (ValueError, TypeError, babel.UnknownLocaleError):
        return None
    parts = [loc.language, loc.script, loc.territory, loc.variant]
    return "-".join(p for p in parts if p)


# --- field parsers ------------------------------------------------------------


# A value that ends in a time of day without a UTC offset, or is a bare date (midnight).
_NAIVE_TIME = r"[T ]\d{2}(?::\d{2}(?::\d{2}(?:[.,]\d+)?)?)?$"
_BARE_DATE = r"^\d{4}-\d{2}-\d{2}$"


def parse_money(reasons: Reasons, name: str, amount: pa.Array, currency: pa.Array, *,
                required: bool = False, non_negative: bool = False, as_arrow: bool = False) -> tuple[np.ndarray, object]:
    """Exact money: the amount in 1/10000 units and the ISO 4217 currency (an Arrow array with
    ``as_arrow``, else numpy objects). Reasons for a value that is not a decimal number (with
    ``required``, an empty one is "missing" instead), a negative one (with ``non_negative``), an
    unknown currency, and more decimal places than the currency has."""
    raw = pc.utf8_trim_whitespace(amount)
    valid, units, frac = parse_decimal(raw)
    not_number = ~valid
    if required:
        reasons.add(empty(raw), f"{name} is missing")
        not_number &= ~empty(raw)
    reasons.add_quoting(not_number, name, raw,
                        "is not a decimal number (use '.' for decimals, no thousands separators)")
    units_int = np.where(valid, _np(pc.cast(pc.if_else(pa.array(valid), units, "0"), pa.int64())), 0)
    if non_negative:
        reasons.add_quoting(valid & (units_int < 0), name, raw, f"is negative; a {name} is 0 or more")
    code = pc.utf8_upper(pc.utf8_trim_whitespace(currency))
    precision = currency_precision()
    known = _mask(pc.is_in(code, value_set=pa.array(list(precision))))
    reasons.add_quoting(~known, "currency", code, "is not an ISO 4217 code")
    # Each distinct code's digits, spread back to the rows by index (a chunk has a handful of codes).
    distinct = pc.unique(code)
    digits = np.array([precision.get(c, 4) for c in distinct.to_pylist()], dtype=np.int64)
    digits = digits[_np(pc.index_in(code, value_set=distinct))] if len(code) else digits
    too_precise = valid & known & (_np(pc.utf8_length(frac)) > digits)
    reasons.add_quoting(too_precise, f"{name} has more decimal places than currency", code, "allows")
    return units_int, (code if as_arrow else _np(code))


def parse_flag(reasons: Reasons, name: str, arr: pa.Array) -> np.ndarray:
    """A true/false column in the spellings _TRUE and _FALSE accept; anything else is a reason."""
    flag = pc.utf8_lower(clean_text(arr))
    values = _np(flag)
    is_true = np.isin(values, list(_TRUE))
    reasons.add_quoting(~is_true & ~np.isin(values, list(_FALSE)), name, flag, "is not true or false")
    return is_true


# The shape Arrow's ISO 8601 cast reads exactly as pandas does (checked value by value in
# tests/ingest/test_timestamps.py): a date in 1900-2099 (well inside the nanosecond instants pandas
# holds), 'T' or ' ', a time to the second, up to six decimals, a zone.
_ARROW_ISO = r"^(?:19|20)\d{2}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}(?::?\d{2})?)$"
_UTC_US = pa.timestamp("us", "UTC")


def parse_timestamps(arr: pa.Array) -> pd.DatetimeIndex:
    """ISO 8601 to UTC; naive times are UTC; invalid values become NaT."""
    # pandas gives a naive value the offset of the first zoned value in the same array (so
    # "10:00" after a "+05:30" became 04:30 UTC): naive values are made explicitly UTC first.
    for pattern, suffix in ((_NAIVE_TIME, "Z"), (_BARE_DATE, "T00:00:00Z")):
        naive = pc.fill_null(pc.match_substring_regex(arr, pattern), False)
        arr = pc.if_else(naive, pc.binary_join_element_wise(arr, pa.scalar(suffix), ""), arr)
    # Arrow's cast reads the common shape in C++, about ten times faster than pandas' strptime (a
    # third of a purchase file's validation); pandas reads the other values, and every value if one
    # of the common shape is no instant at all (a 30 February fails Arrow's whole cast).
    common = _mask(pc.match_substring_regex(arr, _ARROW_ISO))
    try:
        fast = pc.cast(arr.filter(pa.array(common)), _UTC_US) if common.any() else None
    except pa.ArrowInvalid:
        fast, common = None, np.zeros(len(arr), dtype=bool)
    if fast is not None and common.all():
        return pd.DatetimeIndex(fast.to_pandas()).as_unit("ns")
    values = np.full(len(arr), np.datetime64("NaT", "ns"))
    if fast is not None:
        values[common] = fast.to_numpy(zero_copy_only=False).astype("datetime64[ns]")
    rest = ~common
    slow = pd.to_datetime(_np(arr.filter(pa.array(rest))), format="ISO8601", utc=True, errors="coerce")
    values[rest] = pd.DatetimeIndex(slow).tz_localize(None).as_unit("ns").to_numpy()
    return pd.DatetimeIndex(values).tz_localize("UTC")


def parse_dates(arr: pa.Array) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(_np(arr), format="%Y-%m-%d", errors="coerce"))


_DECIMAL = r"^(?P<sign>[+-]?)(?P<int>\d{1,14})(?:\.(?P<frac>\d{0,4}))?$"


def parse_decimal(arr: pa.Array) -> tuple[np.ndarray, pa.Array, pa.Array]:
    """Exact decimals with up to 14 integer and 4 fractional digits.

    Returns (valid mask, integer count of 1/10000 units as strings, significant
    fractional digits) so that no value ever passes through a float.
    """
    parts = pc.extract_regex(arr, _DECIMAL)
    valid = _mask(pc.is_valid(parts))
    sign = pc.fill_null(pc.struct_field(parts, "sign"), "")
    whole = pc.fill_null(pc.struct_field(parts, "int"), "0")
    frac = pc.fill_null(pc.struct_field(parts, "frac"), "")
    units = pc.binary_join_element_wise(sign, whole, pc.utf8_rpad(frac, width=4, padding="0"), "")
    return valid, units, pc.utf8_rtrim(frac, characters="0")


# --- purchases ------------------------------------------------------------------


def standardise_purchases(cols: dict[str, pa.Array], partition: date) -> tuple[dict, Reasons]:
    """The purchase rows' values and their reasons. Text columns and the currency stay Arrow arrays
    (PostgreSQL's COPY and the metrics delta take them as they are: no Python object per value);
    ``purchased_at`` is a UTC DatetimeIndex, amounts and quantities are numpy integers."""
    n = len(cols["transaction_id"])
    reasons = Reasons(n)
    out: dict = {}
    for name in ("transaction_id", "customer_id", "store_id", "sku", "category", "coupon_code"):
        arr = clean_text(cols[name]) if name in cols else pa.array([""] * n, type=pa.string())
        require(reasons, name, arr, 64, required=name != "coupon_code")
        out[name] = arr
    out["coupon_code"] = pc.if_else(pa.array(empty(out["coupon_code"])), pa.scalar(None, pa.string()),
                                    out["coupon_code"])

    raw_ts = pc.utf8_trim_whitespace(cols["purchased_at"])
    ts = parse_timestamps(raw_ts)
    bad_ts = np.asarray(ts.isna())
    reasons.add_quoting(bad_ts & ~empty(raw_ts), "purchased_at", raw_ts, "is not an ISO 8601 timestamp")
    reasons.add(empty(raw_ts), "purchased_at is missing")
    # Late files are normal, files from the future are not: allow a day of clock skew.
    latest = pd.Timestamp(partition + timedelta(days=2), tz="UTC")
    reasons.add(~bad_ts & np.asarray(ts > latest), f"purchased_at is after the partition date {partition}")
    out["purchased_at"] = ts

    out["amount_units"], out["currency"] = parse_money(reasons, "amount", cols["amount"], cols["currency"],
                                                       as_arrow=True)

    raw_qty = pc.utf8_trim_whitespace(cols["quantity"])
    qty_ok = _mask(pc.match_substring_regex(raw_qty, r"^[+-]?\d{1,6}$"))
    reasons.add_quoting(~qty_ok, "quantity", raw_qty, "is not a whole number")
    qty = np.where(qty_ok, _np(pc.cast(pc.if_else(pa.array(qty_ok), raw_qty, "0"), pa.int64())), 0)
    reasons.add(qty_ok & (qty == 0), "quantity is 0")
    out["quantity"] = qty
    return out, reasons


# --- customers ------------------------------------------------------------------

_EMAIL = (
    r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
)
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0", ""}


def standardise_emails(arr: pa.Array, reasons: Reasons) -> np.ndarray:
    """Lower-cased, syntax-checked addresses (no DNS). Common addresses pass a
    regular expression; the rest (international, quoted) go through email-validator."""
    arr = pc.utf8_lower(clean_text(arr))
    values = _np(arr).copy()
    blank = values == ""
    # RFC 5321 limits: 254 characters in all, 64 before the '@'.
    too_long = _mask(pc.greater(pc.utf8_length(arr), 254)) | _mask(pc.match_substring_regex(arr, r"^[^@]{65,}@"))
    reasons.add(too_long, "email is longer than an address may be")
    fast = _mask(pc.match_substring_regex(arr, _EMAIL)) | too_long
    msgs = np.full(len(values), "", dtype=object)
    for i in np.flatnonzero(~fast & ~blank):  # too long ones were reported above
        try:
            values[i] = email_validator.validate_email(
                values[i], check_deliverability=False, allow_smtputf8=True
            ).normalized.lower()
        except email_validator.EmailNotValidError as exc:
            msgs[i] = f"email is not a valid address: {_no_pii(str(exc))}"
    reasons.add(msgs != "", msgs)
    values[blank] = None
    return values


def _no_pii(message: str) -> str:
    # email-validator sometimes quotes the address's domain; keep its explanation only.
    return message.split(":")[0].rstrip(".") if "@" in message or "'" in message else message.rstrip(".")


def standardise_phones(arr: pa.Array, countries: np.ndarray, reasons: Reasons) -> np.ndarray:
    """Phone numbers to E.164, read in the customer's country when written nationally."""
    values = _np(clean_text(arr)).copy()
    msgs = np.full(len(values), "", dtype=object)
    for i in np.flatnonzero(values != ""):
        try:
            number = phonenumbers.parse(values[i], countries[i] or None)
        except phonenumbers.NumberParseException:
            number = None
        if number is None or not phonenumbers.is_valid_number(number):
            msgs[i] = f"phone is not a valid number for country {countries[i] or '(none)'}"
            continue
        values[i] = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    reasons.add(msgs != "", msgs)
    values[values == ""] = None
    return values


def standardise_customers(
    cols: dict[str, pa.Array],
    partition: date,
    default_locale: str,
    default_timezone: str,
    attributes: list[CustomAttribute],
) -> tuple[dict[str, np.ndarray], Reasons]:
    n = len(cols["customer_id"])
    reasons = Reasons(n)
    out: dict[str, np.ndarray] = {}
    blank = pa.array([""] * n, type=pa.string())

    customer_id = clean_text(cols["customer_id"])
    require(reasons, "customer_id", customer_id, 64)
    out["customer_id"] = _np(customer_id)
    for name in ("first_name", "last_name"):
        arr = clean_text(cols.get(name, blank))
        require(reasons, name, arr, 100, required=False)
        out[name] = np.where(_np(arr) == "", None, _np(arr))

    country = pc.utf8_upper(clean_text(cols["country"]))
    reasons.add(empty(country), "country is missing")
    known = _mask(pc.is_in(country, value_set=pa.array(sorted(country_codes()))))
    reasons.add_quoting(~known & ~empty(country), "country", country, "is not an ISO 3166-1 alpha-2 code")
    out["country"] = _np(country)

    out["email"] = standardise_emails(cols.get("email", blank), reasons)
    out["phone"] = standardise_phones(cols.get("phone", blank), np.where(known, out["country"], ""), reasons)

    raw_bday = clean_text(cols.get("birthday", blank))
    bday = parse_dates(raw_bday)
    has_bday = ~empty(raw_bday)
    reasons.add(has_bday & np.asarray(bday.isna()), "birthday is not a date in YYYY-MM-DD form")
    reasons.add(has_bday & np.asarray(bday > pd.Timestamp(partition)), "birthday is in the future")
    oldest = pd.Timestamp(partition.replace(year=partition.year - 120, day=min(partition.day, 28)))
    reasons.add(has_bday & np.asarray(bday < oldest), "birthday is more than 120 years ago")
    out["birthday"] = np.where(has_bday & ~np.asarray(bday.isna()), bday.strftime("%Y-%m-%d"), None)

    raw_locale = clean_text(cols["locale"])
    locale_values = np.where(_np(raw_locale) == "", default_locale, _np(raw_locale))
    uniques, inverse = np.unique(locale_values.astype(str), return_inverse=True)
    canon = np.array([canonical_locale(u) or "" for u in uniques], dtype=object)[inverse]
    reasons.add_quoting(canon == "", "locale", raw_locale, "is not a known BCP 47 locale (e.g. hi-IN)")
    out["locale"] = canon

    tz = clean_text(cols["timezone"])
    tz = pc.if_else(pa.array(empty(tz)), default_timezone, tz)
    tz_ok = _mask(pc.is_in(tz, value_set=pa.array(sorted(timezones()))))
    reasons.add_quoting(~tz_ok, "timezone", tz, "is not an IANA time zone (e.g. Asia/Kolkata)")
    out["timezone"] = _np(tz)

    out["email_consent"] = parse_flag(reasons, "email_consent", cols["email_consent"])

    updated_raw = clean_text(cols["updated_at"])
    updated = parse_timestamps(updated_raw)
    reasons.add_quoting(np.asarray(updated.isna()), "updated_at", updated_raw, "is not an ISO 8601 timestamp")
    latest = pd.Timestamp(partition + timedelta(days=2), tz="UTC")
    reasons.add(np.asarray(updated > latest), f"updated_at is after the partition date {partition}")
    created_raw = clean_text(cols["created_at"])
    created = parse_timestamps(created_raw)
    reasons.add_quoting(
        np.asarray(created.isna()) & ~empty(created_raw), "created_at", created_raw, "is not an ISO 8601 timestamp"
    )
    out["updated_at"] = updated
    out["created_at"] = created.where(~created.isna(), updated)

    out["attributes"] = _custom_attributes(cols, attributes, reasons, n)
    return out, reasons


# --- products -------------------------------------------------------------------

# A link in an e-mail must not downgrade to plain HTTP (mixed content, tampering on the way), and must
# name a host: "https:///x" or "https://" alone is no link. No user-info part ("user@host"), a
# classic way to disguise where a link goes.
_HTTPS_URL = r"^(?i:https)://[^\s/?#@:]+(?::\d{1,5})?(?:[/?#]\S*)?$"
URL_MAX = 2048  # what browsers and mail clients reliably keep


def standardise_products(cols: dict[str, pa.Array], partition: date) -> tuple[dict[str, np.ndarray], Reasons]:
    """The catalogue's rows: text trimmed, exact prices, https links, a stock flag and the version time.

    Nothing in a product row is personal data, so reasons quote the offending value.
    """
    n = len(cols["sku"])
    reasons = Reasons(n)
    out: dict[str, np.ndarray] = {}
    blank = pa.array([""] * n, type=pa.string())
    # (column, max length, required): sku and category match the purchases' columns they join to.
    texts = [("sku", 64, True), ("name", 200, True), ("category", 64, True), ("brand", 100, False)]
    texts += [(f"name_{lang}", 200, False) for lang in PRODUCT_NAME_LOCALES]
    for name, max_len, required in texts:
        arr = clean_text(cols.get(name, blank))
        require(reasons, name, arr, max_len, required=required)
        values = _np(arr)
        out[name] = values if required else np.where(values == "", None, values)

    out["price_units"], out["currency"] = parse_money(reasons, "price", cols["price"], cols["currency"],
                                                      required=True, non_negative=True)

    for name in ("url", "image_url"):
        arr = pc.utf8_trim_whitespace(cols[name])
        missing = empty(arr)
        reasons.add(missing, f"{name} is missing")
        too_long = _mask(pc.greater(pc.utf8_length(arr), URL_MAX))
        reasons.add(too_long, f"{name} is longer than {URL_MAX} characters")
        https = _mask(pc.match_substring_regex(arr, _HTTPS_URL))
        reasons.add_quoting(~https & ~missing & ~too_long, name, arr, "is not an https:// URL with a host")
        out[name] = _np(arr)

    # The same spellings as a profile's email_consent; empty means not in stock, so that a row
    # without the flag is never recommended.
    out["in_stock"] = parse_flag(reasons, "in_stock", cols["in_stock"])

    # As a profile's updated_at: the version time that decides which row of a product wins.
    updated_raw = clean_text(cols["updated_at"])
    updated = parse_timestamps(updated_raw)
    reasons.add(empty(updated_raw), "updated_at is missing")
    reasons.add_quoting(np.asarray(updated.isna()) & ~empty(updated_raw), "updated_at", updated_raw,
                        "is not an ISO 8601 timestamp")
    latest = pd.Timestamp(partition + timedelta(days=2), tz="UTC")
    reasons.add(np.asarray(updated > latest), f"updated_at is after the partition date {partition}")
    out["updated_at"] = updated
    return out, reasons


def _custom_attributes(cols, attributes: list[CustomAttribute], reasons: Reasons, n: int) -> list[dict]:
    """Declared extra columns, typed; an empty value clears the attribute (JSON null)."""
    result: list[dict] = [{} for _ in range(n)]
    for attr in attributes:
        if attr.name not in cols:
            continue
        arr = clean_text(cols[attr.name])
        values = _np(arr)
        has = values != ""
        if attr.type == "date":
            parsed = parse_dates(arr)
            bad = has & np.asarray(parsed.isna())
            reasons.add(bad, f"{attr.name} is not a date in YYYY-MM-DD form")
            typed = np.where(has & ~bad, parsed.strftime("%Y-%m-%d"), None)
        elif attr.type == "number":
            valid, _, _ = parse_decimal(arr)
            bad = has & ~valid
            reasons.add_quoting(bad, attr.name, arr, "is not a number")
            typed = np.array([_number(v) if ok else None for v, ok in zip(values, has & ~bad)], dtype=object)
        elif attr.type == "boolean":
            low = np.char.lower(values.astype(str))
            bad = has & ~np.isin(low, list(_TRUE | _FALSE))
            reasons.add_quoting(bad, attr.name, arr, "is not true or false")
            typed = np.where(has & ~bad, np.isin(low, list(_TRUE)), None)
        else:
            require(reasons, attr.name, arr, 500, required=False)
            typed = np.where(has, values, None)
        for i, v in enumerate(typed):
            result[i][attr.name] = v
    return result


def _number(text: str) -> int | float:
    d = Decimal(text)
    return int(d) if d == d.to_integral_value() else float(d)
