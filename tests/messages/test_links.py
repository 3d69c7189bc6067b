"""Shop links: the campaign's UTM parameters added to any https URL, its own query and fragment kept."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest

from crm_tasks.messages.links import with_utm

UTM = {"source": "crm", "campaign": "at_risk_offer", "content": "b"}


def test_utm_parameters_are_added_after_the_urls_own_query_and_before_its_fragment():
    url = with_utm("https://shop.example.com/p/SKU-1?colour=red&size=M#reviews", **UTM)
    parts = urlsplit(url)
    assert parts.fragment == "reviews" and parts.path == "/p/SKU-1"
    assert parse_qsl(parts.query) == [("colour", "red"), ("size", "M"), ("utm_source", "crm"),
                                      ("utm_medium", "email"), ("utm_campaign", "at_risk_offer"), ("utm_content", "b")]


def test_the_urls_own_query_is_kept_exactly_and_its_utm_parameters_replaced_not_doubled():
    url = with_utm("https://shop.example.com/s?q=dal%20masoor&utm_source=old&x=&utm_campaign=old", **UTM)
    query = urlsplit(url).query
    assert query.startswith("q=dal%20masoor&x=&utm_source=crm&")  # as written: no re-encoding
    assert query.count("utm_source=") == query.count("utm_campaign=") == 1 and "old" not in query


def test_a_bare_host_gets_a_path_and_values_are_encoded():
    url = with_utm("https://shop.example.com", source="crm", campaign="win back", content="a&b=c")
    assert url == ("https://shop.example.com/?utm_source=crm&utm_medium=email&utm_campaign=win%20back"
                   "&utm_content=a%26b%3Dc")


@pytest.mark.parametrize("url", ["http://shop.example.com/", "ftp://shop.example.com/", "/p/SKU-1",
                                 "javascript:alert(1)", "https:///nohost", "shop.example.com/p/1"])
def test_anything_but_an_absolute_https_url_is_refused_by_name(url):
    with pytest.raises(ValueError, match="not an https URL"):
        with_utm(url, **UTM)
