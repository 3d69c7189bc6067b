"""Landing-file readers: the fast and the exact CSV paths agree; prefetch is safe."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from crm_tasks.ingest.readers import iter_csv, prefetch, read_csv_header, scan_file


def read_all(path, chunk_rows=1000):
    scan = scan_file(path, text=True)
    header = read_csv_header(path, "f.csv")
    records, broken = [], []
    for chunk in iter_csv(path, header, scan, chunk_rows, "f.csv"):
        raws = chunk.raw_text(np.arange(len(chunk)))
        for i in range(len(chunk)):
            records.append((int(chunk.line_no[i]), tuple(c[i].as_py() for c in chunk.columns.values()), raws[i]))
        broken.extend(chunk.broken)
    return scan.has_quotes, records, broken


def test_fast_and_exact_paths_agree(tmp_path):
    rng = np.random.default_rng(4)
    lines = ["a,b,c"]
    for i in range(3000):
        kind = rng.integers(0, 20)
        if kind == 0:
            lines.append("")  # blank
        elif kind == 1:
            lines.append(f"{i},x")  # truncated
        elif kind == 2:
            lines.append(f"{i},x,y,z")  # too many fields
        else:
            lines.append(f"{i},v{i}, w{i} ")
    text = "\n".join(lines) + "\n"
    fast, exact = tmp_path / "fast.csv", tmp_path / "exact.csv"
    fast.write_text(text)
    # One quoted value anywhere sends a file down the exact path; it must read the same.
    exact.write_text(text.replace("0,v0, w0 ", '"0",v0, w0 ', 1))
    quotes_fast, rec_fast, broken_fast = read_all(fast)
    quotes_exact, rec_exact, broken_exact = read_all(exact)
    assert (quotes_fast, quotes_exact) == (False, True)
    assert [r[:2] for r in rec_fast] == [r[:2] for r in rec_exact]
    assert [r[2] for r in rec_fast[1:]] == [r[2] for r in rec_exact[1:]]
    assert broken_fast == broken_exact and len(broken_fast) > 100
    assert len(rec_fast) + len(broken_fast) == sum(1 for line in lines[1:] if line.strip())


def test_prefetch_keeps_order_and_raises_producer_errors():
    assert list(prefetch(iter(range(50)))) == list(range(50))

    def failing():
        yield 1
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(prefetch(failing()))


def test_leaving_prefetch_early_stops_the_producer():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    for item in prefetch(endless()):
        if item == 3:
            break
    assert not [t for t in threading.enumerate() if t.name == "crm-prefetch"]
    assert len(produced) <= 6
