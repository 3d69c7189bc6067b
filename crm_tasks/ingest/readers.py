"""Reading landing files in bounded chunks, with the physical line number and raw
text of every row, so that a rejected row can be quarantined verbatim.

Two CSV paths give the same result:
- fast: a file without any double quote has one record per physical line, so
  Arrow splits lines and fields in C++ (millions of rows a second);
- exact: any other file goes through Python's csv module, which understands
  quoting and newlines inside quoted fields.
"""

from __future__ import annotations

import csv
import hashlib
import json
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from crm_tasks.errors import UnreadableFile

_BLOCK = 16 << 20


@dataclass
class FileScan:
    """What one pass over a file's bytes tells before parsing."""

    checksum: str
    size: int
    has_quotes: bool = False
    problem: str | None = None  # why the file cannot be read as UTF-8 CSV, if it cannot
    # Lines that are not text (a NUL byte, bytes that are not UTF-8), by line number: quarantined
    # one by one, while the rest of the file loads.
    bad_lines: dict[int, str] = field(default_factory=dict)


@dataclass
class Chunk:
    """Up to ``chunk_rows`` records: string columns and the line number of each row.

    ``raw_text`` gives the verbatim input of chosen rows; it is only asked for
    rejected rows, so Parquet rows are turned into JSON only when one fails.
    """

    columns: dict[str, pa.Array]
    line_no: np.ndarray
    raw: pa.Array | pa.RecordBatch
    # Rows that could not be split into the header's fields: (line, raw text, reason).
    broken: list[tuple[int, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.line_no)

    def raw_text(self, positions: np.ndarray) -> list[str]:
        picked = self.raw.take(pa.array(positions, type=pa.int64()))
        if isinstance(picked, pa.RecordBatch):
            return [json.dumps(r, default=str, ensure_ascii=False) for r in picked.to_pylist()]
        return picked.to_pylist()


# More bad lines than this and the file is not a UTF-8 export with a few damaged rows, but something else.
MAX_BAD_LINES = 10_000
_NUL = "a NUL byte (binary data in a text file); fix or remove this row"
# Lines are scanned in whole-line pieces; a line longer than this is no CSV record.
_MAX_LINE = 4 * _BLOCK


def _line_problem(line: bytes) -> str | None:
    if b"\x00" in line:
        return _NUL
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (f"not valid UTF-8 (byte 0x{line[exc.start]:02X} at position {exc.start + 1}); "
                "re-export the file as UTF-8")
    return None


def scan_file(path: Path, text: bool) -> FileScan:
    """Checksum the file; for text files also find the lines that are not UTF-8 text (or hold a NUL),
    so that those rows alone are quarantined. A header that is not text makes the file unreadable."""
    digest = hashlib.sha256()
    size, has_quotes, lines_before = 0, False, 0
    bad: dict[int, str] = {}
    problem: str | None = None
    carry = b""
    with open(path, "rb") as fh:
        while True:
            block = fh.read(_BLOCK)
            digest.update(block)
            size += len(block)
            if not text or problem:
                if not block:
                    break
                continue
            data = carry + block
            cut = len(data) if not block else data.rfind(b"\n") + 1
            if cut == 0 and len(data) > _MAX_LINE:
                problem = f"line {lines_before + 1} is longer than {_MAX_LINE >> 20} MiB: not a CSV record"
                continue
            piece, carry = data[:cut], data[cut:]
            if piece:
                if lines_before == 0:
                    header = piece.split(b"\n", 1)[0]
                    if b"\x00" in header:
                        problem = "binary content, not a CSV text file; export it as UTF-8 CSV"
                        continue
                    if not _is_utf8(header):
                        problem = "the header line is not valid UTF-8 text; re-export the file as UTF-8"
                        continue
                if b"\x00" in piece or not _is_utf8(piece):
                    for i, line in enumerate(piece.split(b"\n")):
                        why = _line_problem(line)
                        if why:
                            bad[lines_before + i + 1] = why
                    if len(bad) > MAX_BAD_LINES:
                        problem = (f"more than {MAX_BAD_LINES:,} lines are not UTF-8 text (first on line {min(bad)}); "
                                   "re-export the file as UTF-8")
                        continue
                # A quote may hide a comma or a newline inside a value; the unit separator
                # would confuse the fast path's line reader. Either sends the file the exact way.
                has_quotes = has_quotes or b'"' in piece or b"\x1f" in piece
                lines_before += piece.count(b"\n")
            if not block:
                break
    return FileScan(digest.hexdigest(), size, has_quotes, problem, {} if problem else bad)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def read_csv_header(path: Path, display: str) -> list[str]:
    with open(path, "rb") as fh:  # bytes: a damaged row further down must not fail the header
        first = fh.readline().decode("utf-8-sig")
    if not first.strip():
        raise UnreadableFile(display, "empty file: the first line must be the header row")
    try:
        header = next(csv.reader([first]))
    except csv.Error as exc:
        raise UnreadableFile(display, f"the header line is not CSV: {exc}") from None
    return [h.strip() for h in header]


# A quoted value may span lines (an address), but not this many: beyond it, a
# quote was opened and never closed, and the rest of the file would vanish into it.
MAX_LINES_PER_RECORD = 20


def iter_csv(path: Path, header: list[str], scan: FileScan, chunk_rows: int, display: str) -> Iterator[Chunk]:
    if scan.has_quotes:
        yield from _iter_csv_exact(path, header, chunk_rows, display, scan.bad_lines)
    elif _has_data_lines(path):
        yield from _iter_csv_fast(path, header, chunk_rows, scan.bad_lines)


def _has_data_lines(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.readline()
        return bool(fh.read(1))


def _shown(raw: bytes | str) -> str:
    """A bad line as quarantine can keep it: undecodable bytes and NULs become U+FFFD."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "replace").replace("\x00", "\ufffd").rstrip("\r\n")


def _iter_csv_fast(path: Path, header: list[str], chunk_rows: int, bad: dict[int, str]) -> Iterator[Chunk]:
    width = len(header)
    bad_numbers = np.array(sorted(bad), dtype=np.int64)
    # Every line is one record; reading it as one column leaves the splitting to us.
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=["line"], skip_rows=1, block_size=_BLOCK),
        parse_options=pacsv.ParseOptions(
            delimiter="\x1f", quote_char=False, escape_char=False,
            newlines_in_values=False, ignore_empty_lines=False,
            invalid_row_handler=lambda row: "error",
        ),
        # Bytes, not text: a line that is not UTF-8 is quarantined below instead of failing the file.
        convert_options=pacsv.ConvertOptions(column_types={"line": pa.binary()}, strings_can_be_null=False),
    )
    next_line = 2
    pending: list[pa.Array] = []
    pending_rows = 0

    def flush(lines: pa.Array, first_line: int) -> Chunk:
        line_no = np.arange(first_line, first_line + len(lines), dtype=np.int64)
        not_text = []
        if len(bad_numbers):
            hit = np.isin(line_no, bad_numbers)
            if hit.any():
                not_text = [(int(n), _shown(lines[int(i)].as_py()), bad[int(n)])
                            for i, n in zip(np.flatnonzero(hit), line_no[hit], strict=True)]
                lines, line_no = lines.filter(pa.array(~hit)), line_no[~hit]
        lines = pc.utf8_rtrim(lines.cast(pa.string()), characters="\r")
        # Blank lines carry no data: they are not records (as in the exact path).
        filled = pc.not_equal(pc.utf8_length(pc.utf8_trim_whitespace(lines)), 0)
        if not pc.all(filled).as_py():
            lines, line_no = lines.filter(filled), line_no[filled.to_numpy(zero_copy_only=False)]
        parts = pc.split_pattern(lines, ",")
        counts = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
        ok = counts == width
        broken = not_text + [
            (int(line_no[i]), lines[i].as_py(), _field_count_reason(int(counts[i]), width, lines[i].as_py()))
            for i in np.flatnonzero(~ok)
        ]
        if not ok.all():
            keep = pa.array(ok)
            parts, lines, line_no = parts.filter(keep), lines.filter(keep), line_no[ok]
        flat = pc.list_flatten(parts)
        idx = np.arange(len(lines), dtype=np.int64) * width
        columns = {name: flat.take(pa.array(idx + j)) for j, name in enumerate(header)}
        return Chunk(columns, line_no, lines, broken)

    for batch in reader:
        pending.append(batch.column(0))
        pending_rows += batch.num_rows
        while pending_rows >= chunk_rows:
            merged = pa.concat_arrays(pending)
            head, rest = merged.slice(0, chunk_rows), merged.slice(chunk_rows)
            yield flush(head, next_line)
            next_line += chunk_rows
            pending, pending_rows = ([rest] if len(rest) else []), len(rest)
    if pending_rows:
        yield flush(pa.concat_arrays(pending), next_line)


def _field_count_reason(count: int, width: int, text: str) -> str:
    if count < width:
        return f"line has {count} fields but the header has {width} (truncated line?)"
    return f"line has {count} fields but the header has {width} (unquoted comma in a value?)"


def _iter_csv_exact(path: Path, header: list[str], chunk_rows: int, display: str,
                    bad: dict[int, str]) -> Iterator[Chunk]:
    width = len(header)
    # surrogateescape: a line that is not UTF-8 reads (and is quarantined below) instead of failing the file.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        fh.readline()
        raw_lines: list[str] = []

        def recording():
            for text in fh:
                raw_lines.append(text)
                yield text

        reader = csv.reader(recording(), strict=True)
        line = 1
        done = False
        while not done:
            cols: list[list[str]] = [[] for _ in header]
            line_nos: list[int] = []
            raws: list[str] = []
            broken: list[tuple[int, str, str]] = []
            for _ in range(chunk_rows):
                raw_lines.clear()
                try:
                    record = next(reader)
                except StopIteration:
                    done = True
                    break
                except csv.Error as exc:
                    start = line + 1
                    if len(raw_lines) > MAX_LINES_PER_RECORD or "unexpected end of data" in str(exc):
                        raise UnreadableFile(
                            display, f"line {start}: a quoted value opened here is never closed; fix the quoting"
                        ) from None
                    line += len(raw_lines)
                    why = next((bad[n] for n in range(start, line + 1) if n in bad), None) if bad else None
                    broken.append((start, _shown("".join(raw_lines)), why or f"not valid CSV: {exc}"))
                    continue
                start = line + 1
                if len(raw_lines) > MAX_LINES_PER_RECORD:
                    raise UnreadableFile(
                        display,
                        f"line {start}: a quoted value runs over {len(raw_lines)} lines; a quote was probably "
                        f"opened and never closed",
                    )
                line += len(raw_lines)
                raw = "".join(raw_lines).rstrip("\r\n")
                why = next((bad[n] for n in range(start, line + 1) if n in bad), None) if bad else None
                if why:
                    broken.append((start, _shown(raw), why))
                    continue
                if not raw.strip():
                    continue  # a blank line is not a record
                if len(record) != width:
                    broken.append((start, raw, _field_count_reason(len(record), width, raw)))
                    continue
                for j, value in enumerate(record):
                    cols[j].append(value)
                line_nos.append(start)
                raws.append(raw)
            if not line_nos and not broken:
                continue  # only blank lines in this stretch; the file may go on
            yield Chunk(
                {name: pa.array(cols[j], type=pa.string()) for j, name in enumerate(header)},
                np.array(line_nos, dtype=np.int64),
                pa.array(raws, type=pa.string()),
                broken,
            )


def read_parquet_header(path: Path, display: str) -> list[str]:
    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UnreadableFile(display, f"not a Parquet file: {exc}") from None


def iter_parquet(path: Path, header: list[str], chunk_rows: int, display: str) -> Iterator[Chunk]:
    """Parquet rows are numbered from 1; the raw text of a row is its JSON (of the kept columns).

    Only ``header`` (the columns kept) is read: others are never loaded, not even into quarantine.
    """
    try:
        yield from _parquet_chunks(path, header, chunk_rows)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise UnreadableFile(display, f"a column cannot be read as text: {exc}") from None


def _parquet_chunks(path: Path, header: list[str], chunk_rows: int) -> Iterator[Chunk]:
    first = 1
    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=header):
        columns = {}
        for name in header:
            col = batch.column(name)
            if pa.types.is_timestamp(col.type) and col.type.tz is None:
                col = pc.cast(col, pa.timestamp(col.type.unit, "UTC"))
            if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
                col = pc.strftime(col, "%Y-%m-%dT%H:%M:%S%z" if pa.types.is_timestamp(col.type) else "%Y-%m-%d")
            columns[name] = pc.fill_null(pc.cast(col, pa.string()), "")
        n = batch.num_rows
        yield Chunk(columns, np.arange(first, first + n, dtype=np.int64), batch)
        first += n


_DONE = object()


def prefetch(items: Iterable, depth: int = 1) -> Iterator:
    """Iterate ``items`` in a background thread, at most ``depth`` ahead.

    Arrow, pandas and the database driver release the GIL for their heavy
    parts, so reading and validating the next chunk overlaps with writing this
    one; memory stays bounded by ``depth`` chunks. An error in the producer is
    raised here; leaving the loop early stops the producer.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((_DONE, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put((_DONE, exc))

    worker = threading.Thread(target=produce, name="crm-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = q.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.1)
