"""Landing timestamps read by Arrow's cast where it can, by pandas elsewhere: the same instants either way."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from crm_tasks.ingest.standardise import parse_timestamps

DATES = ["2026-11-02", "2024-02-29", "2026-02-30", "2026-13-01", "0001-01-01", "2300-01-01", "1899-12-31",
         "2026-1-02"]
TIMES = ["", "T10:15:00", " 10:15:00", "T10:15", "T10", "T23:59:59.999999", "T10:15:00.1234567", "T10:15:00,5",
         "T24:00:00", "T10:15:60", "t10:15:00"]
ZONES = ["", "Z", "z", "+05:30", "+0530", "+05", "-03:00", " +05:30", "+25:00", "+05:30:00", "+14:00"]


def _pandas_reference(values: list[str]) -> pd.DatetimeIndex:
    """The previous reading, value by value: naive values are UTC, anything pandas cannot read is NaT."""
    out = []
    for v in values:
        if not any(ch in v[10:] for ch in "Zz+-") and "T" not in v[10:] and " " not in v[10:]:
            v = v + "T00:00:00Z" if len(v) == 10 else v
        elif not any(ch in v[10:] for ch in "Zz+-"):
            v = v + "Z"
        out.append(pd.to_datetime([v], format="ISO8601", utc=True, errors="coerce")[0])
    return pd.DatetimeIndex(out).as_unit("ns")


@pytest.mark.parametrize("dates", [[d] for d in DATES] + [DATES], ids=DATES + ["all"])
def test_every_shape_reads_as_pandas_reads_it_alone(dates):
    # One date at a time too: a 30 February of the common shape sends a whole array to pandas.
    values = ["".join(p) for p in itertools.product(dates, TIMES, ZONES)] + ["", "x", "20261102T101500Z"]
    got = parse_timestamps(pa.array(values))
    want = _pandas_reference(values)
    assert got.dtype == "datetime64[ns, UTC]"
    diff = [(v, g, w) for v, g, w in zip(values, got, want, strict=True) if not (g == w or (pd.isna(g) and pd.isna(w)))]
    assert diff == []
    assert got.notna().sum() > (0 if dates[0] in ('2026-02-30', '2026-13-01', '2026-1-02', '0001-01-01', '2300-01-01') else 20)


def test_a_file_of_common_values_and_one_odd_one_mixes_both_readers():
    common = [f"2026-11-{d:02d}T10:15:00+05:30" for d in range(1, 29)]
    values = common + ["2026-11-02T10:15:00 +05:30", "2026-02-30T10:00:00Z", "not a time"]
    got = parse_timestamps(pa.array(values))
    assert list(got[:28]) == list(pd.to_datetime(common, utc=True))
    assert got[28] == pd.Timestamp("2026-11-02T04:45:00Z")
    assert got[29:].isna().all()


def test_fast_path_keeps_microseconds_and_order():
    stamps = pd.date_range("2026-01-01", periods=1000, freq="997ms", tz="UTC") + pd.to_timedelta(
        np.arange(1000), unit="us")
    values = [t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for t in stamps]
    got = parse_timestamps(pa.array(values))
    assert (got.asi8 == stamps.as_unit("ns").asi8).all()
