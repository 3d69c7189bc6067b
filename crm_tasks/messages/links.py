"""The shop links of a message: a URL with the campaign's UTM parameters, so that the shop's analytics
tell which campaign and which A/B variant brought a visit.

Pure and cached: a campaign's messages link to a few hundred products at most, each built once per
campaign and variant (planning 100k messages with 3 products would otherwise split 300k URLs).
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import quote, urlsplit, urlunsplit

UTM_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_content")


@lru_cache(maxsize=16_384)
def with_utm(url: str, *, source: str, campaign: str, content: str, medium: str = "email") -> str:
    """``url`` with ``utm_source``, ``utm_medium``, ``utm_campaign`` and ``utm_content`` set.

    The URL's other query parameters and its fragment are kept exactly as written; a UTM parameter it
    already had is replaced (two values would split the shop's figures). Raises ValueError, naming the
    URL, for anything but an absolute https URL: a link in a message must not downgrade to http.
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "https" or not parts.netloc:
        raise ValueError(f"{url!r} is not an https URL; links in messages must start with https://")
    kept = [p for p in parts.query.split("&") if p and p.split("=", 1)[0] not in UTM_KEYS]
    utm = [f"{key}={quote(value, safe='')}" for key, value in
           zip(UTM_KEYS, (source, medium, campaign, content), strict=True)]
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "&".join(kept + utm), parts.fragment))
