"""What the engine accepts from outside: the landing files' columns, the custom profile
attributes declared in crm.yaml, and the frequency cap shared by crm.yaml and campaign files.

These are shapes of data, not settings: ingest validates files against them, settings
and campaign definitions embed them.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
# The catalogue's names in the engine's other languages; `name` is the English (default) one.
PRODUCT_NAME_LOCALES = ("hi", "te", "fa", "ur")
PRODUCT_COLUMNS = (
    "sku", "name", "category", "price", "currency", "url", "image_url", "in_stock", "updated_at", "brand",
    *(f"name_{lang}" for lang in PRODUCT_NAME_LOCALES),
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


class FrequencyCap(BaseModel):
    """At most ``messages`` marketing e-mails to one customer in any ``days`` consecutive days."""

    model_config = ConfigDict(extra="forbid")  # a misspelt limit must not silently become the default

    messages: int = Field(3, ge=1)
    days: int = Field(7, ge=1)
