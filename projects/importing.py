"""Read an uploaded dataset file (CSV or other delimited text, Excel .xlsx, JSON Lines or a JSON array) row by row.

Pure on purpose: no Django models or settings, so an import job, a management
command and the upload preview can all share it and it can be tested alone.
Every reader streams, so a million-row upload costs the memory of a few rows.

How a delimited file is read (its encoding and delimiter) and which sheet of a workbook is a
`Dialect`; `sniff` guesses it (BOMs, a UTF-8 check, charset-normalizer, the delimiter that gives
the most rows of the header's width) and the upload page lets the user change it.

File-level problems (no header, undecodable bytes, a broken JSON document) raise
`ImportFormatError`; problems with one row become a `RowError` so the caller
can report every bad row at once instead of stopping at the first.
"""

from __future__ import annotations

import codecs
import csv
import datetime
import hashlib
import io
import itertools
import json
import math
import os
import re
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Collection, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, NamedTuple

from projects import spanformats

StrPath = str | os.PathLike[str]

FORMATS_BY_EXTENSION: Final[Mapping[str, str]] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",  # Excel's "Unicode Text" (UTF-16, tab-separated) is a .txt
    ".xlsx": "xlsx",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".conll": "conll",  # span projects: token per line, tag last (a .txt in that shape is read as CoNLL too)
}

# The csv default (128 KiB) rejects long documents outright with an unhelpful
# csv.Error; well above any sane text limit, so an over-long text reaches the
# row check and gets a RowError that names the limit.
_CSV_FIELD_LIMIT: Final = 64 * 1024 * 1024
_JSON_CHUNK_CHARS: Final = 64 * 1024
# A value that ends this close to the end of the buffer may be cut off by the
# chunk boundary (a number "12" of "123", a literal "tru" of "true"), so the
# decoder reads on before trusting it.
_JSON_LOOKAHEAD: Final = 64
_JSON_WHITESPACE: Final = re.compile(r"[ \t\n\r]*")
_KNOWN_LABELS_SHOWN: Final = 20
# What the database columns hold (Example.external_id, Label.name); longer values
# would fail the insert with a DataError that names no row.
_MAX_EXTERNAL_ID_CHARS: Final = 255
_MAX_LABEL_CHARS: Final = 100
# Metadata is stored as it came, but a value nested deeper than this is a mistake or an attack,
# and deep nesting makes every JSON encoder on the way (Python's, PostgreSQL's) recurse.
MAX_METADATA_DEPTH: Final = 20
# Shown in messages instead of a whole (possibly megabyte-long) name.
_NAME_SHOWN: Final = 40
DEFAULT_MAX_COLUMNS: Final = 1000
_TOO_DEEP: Final = "JSON nested too deeply (lists or objects inside each other hundreds of levels deep)"
_RESAVE: Final = "re-save the file as UTF-8"
_RESAVE_HINT: Final = (
    "Re-save the file as UTF-8 (in Excel: Save As → 'CSV UTF-8'; in most editors: "
    "Save with encoding → UTF-8) and upload it again, or choose its encoding on the upload page."
)


# What a user may choose on the upload page; the sniffer picks among them.
DELIMITERS: Final[Mapping[str, str]] = {",": "comma (,)", ";": "semicolon (;)", "\t": "tab", "|": "pipe (|)"}
# Encodings offered by name; any other codec Python knows is accepted too (the sniffer may name one).
ENCODINGS: Final[Mapping[str, str]] = {
    "utf-8": "UTF-8",
    "utf-8-sig": "UTF-8 with BOM",
    "utf-16": "UTF-16 (with BOM, Excel's Unicode Text)",
    "cp1252": "Windows-1252 (Western European, Excel's CSV on Windows)",
    "latin-1": "Latin-1 (ISO-8859-1)",
    "iso8859-15": "Latin-9 (ISO-8859-15)",
    "cp1250": "Windows-1250 (Central European)",
    "cp1251": "Windows-1251 (Cyrillic)",
    "mac-roman": "Mac Roman",
}
_SNIFF_BYTES: Final = 64 * 1024
_SNIFF_ROWS: Final = 50
_UTF8_CHECK_CHUNK: Final = 1024 * 1024
_ENCODING_SAMPLE: Final = 512 * 1024
# charset-normalizer ranks by "chaos"; on short West-European samples it often prefers an unrelated
# code page (cp1250, big5) by a hair. Windows-1252 wins when it reads the sample about as cleanly.
_PREFERRED_SINGLE_BYTE: Final = "cp1252"
_CHAOS_MARGIN: Final = 0.1


class ImportFormatError(Exception):
    """A file-level problem that makes the whole file unreadable.

    The message names the file and, where known, the row or line.
    """


@dataclass(frozen=True)
class ColumnMap:
    text: str
    label: str | None = None
    external_id: str | None = None
    # None means every column not mapped above becomes metadata (less `dropped`).
    metadata: tuple[str, ...] | None = None
    # Columns (keys) that are not kept at all.
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True)
class Dialect:
    """How to read a file: the text encoding and delimiter (delimited text), the sheet (a workbook)."""

    encoding: str = "utf-8"
    delimiter: str = ","
    sheet: str = ""  # "" = the first sheet


DEFAULT_DIALECT: Final = Dialect()


@dataclass(frozen=True)
class Sniffed:
    """What `sniff` found: the dialect to start from, and what it saw."""

    dialect: Dialect
    # How the encoding was chosen ("byte order mark", "valid UTF-8", "guessed by charset-normalizer").
    encoding_reason: str = ""
    sheets: tuple[str, ...] = ()


# Named tuples, not dataclasses: one is made per row, and a tuple is made in C (a frozen dataclass's
# __init__ was a tenth of the import's Python time).
class ParsedRow(NamedTuple):
    row: int
    text: str
    labels: tuple[str, ...]
    external_id: str
    metadata: dict[str, object]
    content_hash: str


class RowError(NamedTuple):
    row: int
    reason: str


class _Invalid(Exception):
    """One row's problem; `_build_row` turns it into a RowError."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


# A JSON key that is absent, as opposed to one whose value is null.
_MISSING: Final = _Missing()


@dataclass(frozen=True)
class _RowRules:
    columns: ColumnMap
    known_labels: frozenset[str] | None
    multi_label: bool
    max_text_chars: int
    separator: str
    # "column" for CSV, "key" for JSON, so messages use the user's vocabulary.
    field_word: str


def detect_format(filename: str) -> str:
    """The import format ("csv", "xlsx", "jsonl" or "json") implied by a file name's extension."""
    suffix = Path(filename).suffix.lower()
    try:
        return FORMATS_BY_EXTENSION[suffix]
    except KeyError:
        accepted = ", ".join(FORMATS_BY_EXTENSION)
        found = f"extension {suffix!r}" if suffix else "no extension"
        hint = " (save the workbook as .xlsx, or as CSV)" if suffix in (".xls", ".ods", ".xlsm", ".numbers") else ""
        raise ImportFormatError(
            f"{filename!r} has {found}; accepted file types are {accepted}{hint}"
        ) from None


def content_hash(text: str) -> str:
    """sha256 hex of the text, NFC-normalised with whitespace collapsed, for duplicate detection."""
    # ASCII is NFC already; isascii() is a fast scan where normalize() is a slower one.
    canonical = " ".join((text if text.isascii() else unicodedata.normalize("NFC", text)).split())
    return _sha256(canonical.encode("utf-8")).hexdigest()


_sha256 = hashlib.sha256


# --- dialect: encoding, delimiter, sheet ----------------------------------------


def sniff(path: StrPath, fmt: str, *, display_name: str | None = None) -> Sniffed:
    """Guess how to read a file: its encoding and (delimited text) its delimiter, or (a workbook) its sheets."""
    name = _display_name(path, display_name)
    if fmt == "xlsx":
        sheets = tuple(xlsx_sheets(path, name))
        return Sniffed(Dialect(encoding="", delimiter="", sheet=sheets[0] if sheets else ""), sheets=sheets)
    encoding, reason = detect_encoding(path, name)
    delimiter = ","
    if fmt == "csv":
        delimiter = sniff_delimiter(_text_sample(path, encoding))
    return Sniffed(Dialect(encoding=encoding, delimiter=delimiter), encoding_reason=reason)


def detect_encoding(path: StrPath, name: str | None = None) -> tuple[str, str]:
    """(Python codec name, how it was found) for a text file.

    A byte order mark decides (UTF-8/16/32, what Excel writes); else a file that decodes as UTF-8
    from end to end is UTF-8 (a streamed check, flat memory); else charset-normalizer guesses from
    the start of the file and the bytes around the first one that is not UTF-8.
    """
    shown = _display_name(path, name)
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    for bom, codec in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                       (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                       (codecs.BOM_UTF16_BE, "utf-16")):
        if head.startswith(bom):
            return codec, "byte order mark"
    # UTF-16 without a BOM is valid UTF-8 (ASCII with NULs between): NULs are not text.
    if head.count(0) * 10 < len(head):
        first_bad = _first_non_utf8_byte(path)
        if first_bad is None:
            return "utf-8", "valid UTF-8"
    else:
        first_bad = 0
    sample = head[:_ENCODING_SAMPLE] if len(head) >= _ENCODING_SAMPLE else _read_range(path, 0, _ENCODING_SAMPLE)
    if first_bad >= len(sample):
        window = _read_range(path, max(first_bad - 4096, 0), 64 * 1024)
        sample = sample[: sample.rfind(b"\n") + 1] + window[window.find(b"\n") + 1:]
    guess = _guess_encoding(sample)
    if guess is None:
        raise ImportFormatError(
            f"{shown!r} is not UTF-8 and its encoding could not be recognised. {_RESAVE_HINT}"
        )
    return guess, "guessed by charset-normalizer"


def _guess_encoding(sample: bytes) -> str | None:
    from charset_normalizer import from_bytes  # imported here: only non-UTF-8 files need it

    best = from_bytes(sample).best()
    western = from_bytes(sample, cp_isolation=[_PREFERRED_SINGLE_BYTE]).best()
    if western is not None and (best is None or western.chaos <= best.chaos + _CHAOS_MARGIN):
        return _PREFERRED_SINGLE_BYTE
    if best is None:
        return None
    return codecs.lookup(best.encoding).name


def _read_range(path: StrPath, start: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(size)


def _first_non_utf8_byte(path: StrPath) -> int | None:
    """The offset of the first byte that is not UTF-8, or None; reads the file in 1 MiB chunks."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # of the next chunk in the file
    with open(path, "rb") as f:
        while chunk := f.read(_UTF8_CHECK_CHUNK):
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the last chunk's end
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                return max(offset - pending + exc.start, 0)
            offset += len(chunk)
    pending = len(decoder.getstate()[0])
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return offset - pending
    return None


def _text_sample(path: StrPath, encoding: str) -> str:
    """The first lines of a text file (about 64 KiB), decoded, cut at a line break."""
    with open(path, encoding=encoding, errors="replace", newline="") as f:
        sample = f.read(_SNIFF_BYTES)
        if len(sample) == _SNIFF_BYTES and "\n" in sample:
            sample = sample[: sample.rfind("\n") + 1]
    return sample.removeprefix("\ufeff")


def sniff_delimiter(sample: str) -> str:
    """The delimiter (comma, semicolon, tab or pipe) that splits the sample's rows most consistently.

    Each candidate parses the first rows with double-quote quoting (what Excel and most tools
    write); the one whose rows most often have the header's width (at least two columns) wins,
    and among equals the wider one, then csv.Sniffer's choice, then the order comma, semicolon,
    tab, pipe. A one-column file stays comma-separated.
    """
    _raise_csv_field_limit()
    try:
        sniffed: str | None = csv.Sniffer().sniff(sample, delimiters="".join(DELIMITERS)).delimiter
    except csv.Error:
        sniffed = None
    best: tuple[float, int, bool, int] | None = None
    choice = ","
    for order, delimiter in enumerate(DELIMITERS):
        try:
            rows = [row for row in itertools.islice(csv.reader(io.StringIO(sample), delimiter=delimiter),
                                                     _SNIFF_ROWS) if row]
        except csv.Error:
            continue
        if not rows or len(rows[0]) < 2:
            continue
        width = len(rows[0])
        # The last row may be cut by the sample's end; a file of only a header counts it.
        body = rows[1:-1] if len(rows) > 2 else rows[1:]
        consistent = sum(len(row) == width for row in body) / len(body) if body else 1.0
        score = (consistent, width, delimiter == sniffed, -order)
        if best is None or score > best:
            best, choice = score, delimiter
    return choice


def xlsx_sheets(path: StrPath, name: str | None = None) -> list[str]:
    """The sheet names of a workbook, in order."""
    with _open_workbook(path, _display_name(path, name)) as workbook:
        return list(workbook.sheetnames)


def preview(
    path: StrPath, fmt: str, dialect: Dialect = DEFAULT_DIALECT, *, rows: int = 10, display_name: str | None = None,
    max_columns: int = DEFAULT_MAX_COLUMNS,
) -> tuple[list[str], list[list[str]]]:
    """(header, first rows) as the import will read them, each cell as text, for the upload page."""
    name = _display_name(path, display_name)
    if fmt == "conll":
        return list(CONLL_COLUMNS), conll_preview(path, name, dialect.encoding, rows)
    if fmt in ("csv", "xlsx"):
        with _table(path, fmt, name, dialect) as records:
            header = _read_csv_header(records, name, max_columns=max_columns)
            body = [[_cell_text(cell) for cell in record] for record in itertools.islice(records, rows * 2) if record]
        return header, body[:rows]
    shown: list[dict[str, object]] = []
    for _, value in _islice(_iter_json_values(path, fmt, name, dialect.encoding), rows):
        shown.append(value if isinstance(value, dict) else {"(not an object)": value})
    header = list(dict.fromkeys(key for item in shown for key in item))
    return header, [[_cell_text(item.get(key, "")) for key in header] for item in shown]


def _cell_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def read_columns(
    path: StrPath, fmt: str, *, display_name: str | None = None, sample_rows: int = 50,
    max_columns: int = DEFAULT_MAX_COLUMNS, dialect: Dialect = DEFAULT_DIALECT,
) -> list[str]:
    """The column names the UI offers for mapping, in first-seen order.

    For CSV and workbooks the header; for JSONL/JSON the union of keys of the first `sample_rows` objects.
    """
    name = _display_name(path, display_name)
    if fmt == "conll":
        if not conll_preview(path, name, dialect.encoding, 1):
            raise ImportFormatError(f"{name!r} holds no sentences; a CoNLL file has a token and its tag on each "
                                    "line, a blank line between sentences")
        return list(CONLL_COLUMNS)
    if fmt in ("csv", "xlsx"):
        with _table(path, fmt, name, dialect) as records:
            header = _read_csv_header(records, name, max_columns=max_columns)
        columns = list(dict.fromkeys(column for column in header if column))
    else:
        keys: dict[str, None] = {}
        for _, value in _islice(_iter_json_values(path, fmt, name, dialect.encoding), sample_rows):
            if isinstance(value, dict):
                keys.update(dict.fromkeys(value))
                _check_column_count(len(keys), max_columns, name, "keys")
        columns = list(keys)
    for column in columns:
        # The names are stored (a JSON list in the database) and shown: PostgreSQL refuses NUL.
        problem = _unstorable(column)
        if problem:
            raise ImportFormatError(f"{name!r} has a column name {_shown(column)} holding {problem}; "
                                    "rename the column (a file of NUL bytes is not a text file)")
    return columns


def _check_column_count(count: int, max_columns: int, name: str, word: str = "columns") -> None:
    if count > max_columns:
        raise ImportFormatError(
            f"{name!r} has more than {max_columns:,} {word}; the limit is {max_columns:,} — "
            "keep the columns you need (text, label, id and a few metadata) or raise LABELHUB_IMPORT_MAX_COLUMNS"
        )


def iter_rows(
    path: StrPath,
    fmt: str,
    columns: ColumnMap,
    *,
    known_labels: Collection[str] | None,
    multi_label: bool,
    max_text_chars: int,
    display_name: str | None = None,
    label_separator: str = "|",
    max_columns: int = DEFAULT_MAX_COLUMNS,
    dialect: Dialect = DEFAULT_DIALECT,
) -> Iterator[ParsedRow | RowError]:
    """Stream the file, yielding one ParsedRow or RowError per data row.

    Raises ImportFormatError for file-level problems.

    The error can come part-way through (a bad byte near the end of the file
    is only seen when the reader gets there), so callers should treat the
    rows already yielded as provisional until the iterator is exhausted.
    """
    name = _display_name(path, display_name)
    rules = _RowRules(
        columns=columns,
        known_labels=None if known_labels is None else frozenset(label.strip() for label in known_labels),
        multi_label=multi_label,
        max_text_chars=max_text_chars,
        separator=label_separator,
        field_word="column" if fmt in ("csv", "xlsx") else "key",
    )
    if fmt in ("csv", "xlsx"):
        yield from _iter_table_rows(path, fmt, name, rules, max_columns=max_columns, dialect=dialect)
    elif fmt in ("jsonl", "json"):
        yield from _iter_json_rows(path, fmt, name, rules, dialect.encoding)
    else:
        raise ValueError(f"unknown import format {fmt!r}; expected csv, xlsx, jsonl or json")


def count_rows(path: StrPath, fmt: str, dialect: Dialect = DEFAULT_DIALECT) -> int:
    """A fast upper bound on the number of data rows, for progress bars."""
    if fmt == "csv":
        return _count_csv_records(path)
    if fmt == "xlsx":
        with _open_workbook(path, _display_name(path, None)) as workbook:
            sheet = _sheet(workbook, dialect.sheet, _display_name(path, None))
            return max((sheet.max_row or 1) - 1, 0)
    if fmt == "jsonl":
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    if fmt == "conll":
        return count_conll_sentences(path)
    if fmt == "json":
        # Counting elements needs a real parse: commas inside strings and
        # nested objects make any cheaper trick wrong by an unbounded amount.
        return sum(1 for _ in _iter_json_values(path, fmt, _display_name(path, None), dialect.encoding))
    raise ValueError(f"unknown import format {fmt!r}; expected csv, xlsx, jsonl or json")


def unknown_label_reason(labels: Collection[str], known_labels: Collection[str], *, multi_label: bool,
                         label_separator: str = "|") -> str | None:
    """Why a row's labels are refused (one is not in `known_labels`), or None when all are known."""
    rules = _RowRules(columns=ColumnMap(text=""), known_labels=frozenset(known_labels), multi_label=multi_label,
                      max_text_chars=0, separator=label_separator, field_word="column")
    try:
        _check_known(tuple(labels), rules)
    except _Invalid as exc:
        return str(exc)
    return None


# --- reading files -----------------------------------------------------------


def _display_name(path: StrPath, display_name: str | None) -> str:
    return display_name if display_name is not None else Path(path).name


@contextmanager
def _open_text(path: StrPath, name: str, encoding: str = "utf-8") -> Iterator[IO[str]]:
    # The BOM that Excel and Notepad prepend would otherwise end up glued to
    # the first column name (or make json reject the first line).
    codec = _codec(encoding, name)
    with open(path, encoding="utf-8-sig" if codec == "utf-8" else codec, newline="") as f:
        try:
            yield f
        except UnicodeDecodeError as exc:
            if codec == "utf-8":
                raise ImportFormatError(_describe_bad_utf8(path, name)) from exc
            raise ImportFormatError(
                f"{name!r} cannot be read as {ENCODINGS.get(encoding, encoding)}: {exc.reason} "
                f"(byte 0x{exc.object[exc.start]:02x}). Choose another encoding on the upload page, or {_RESAVE}"
            ) from exc


def _codec(encoding: str, name: str) -> str:
    try:
        return codecs.lookup(encoding or "utf-8").name
    except LookupError:
        raise ImportFormatError(f"{name!r}: {encoding!r} is not an encoding Python knows; choose one of "
                                f"{', '.join(ENCODINGS)}") from None


def _describe_bad_utf8(path: StrPath, name: str) -> str:
    # The text reader decodes 8 KiB ahead of the row being parsed, so its
    # error cannot say where the bad byte is; a second pass line by line can.
    # "\n" never occurs inside a multi-byte UTF-8 sequence, so splitting bytes
    # on it is safe.
    offset = 0
    with open(path, "rb") as f:
        for line_number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                byte = line[exc.start]
                return (
                    f"{name!r} is not valid UTF-8: byte 0x{byte:02x} on line {line_number} "
                    f"(byte offset {offset + exc.start}) cannot be decoded. {_RESAVE_HINT}"
                )
            offset += len(line)
    return f"{name!r} is not valid UTF-8. {_RESAVE_HINT}"


class _SheetRows:
    """A workbook sheet's rows as lists of JSON-able cells, counting them in `line_num` as csv.reader does."""

    def __init__(self, sheet: Any) -> None:
        self._rows = sheet.iter_rows(values_only=True)
        self.line_num = 0

    def __iter__(self) -> _SheetRows:
        return self

    def __next__(self) -> list[object]:
        values = next(self._rows)
        self.line_num += 1
        return [_xlsx_value(value) for value in values]


@contextmanager
def _table(path: StrPath, fmt: str, name: str, dialect: Dialect) -> Iterator[Any]:
    """The records of a delimited file (a csv.reader) or a workbook's sheet; each has `line_num`."""
    if fmt == "xlsx":
        with _open_workbook(path, name) as workbook:
            yield _SheetRows(_sheet(workbook, dialect.sheet, name))
        return
    _raise_csv_field_limit()
    delimiter = dialect.delimiter or ","
    if len(delimiter) != 1:
        raise ImportFormatError(f"{name!r}: the delimiter must be one character, not {delimiter!r}")
    with _open_text(path, name, dialect.encoding) as f:
        yield csv.reader(f, delimiter=delimiter)


@contextmanager
def _open_workbook(path: StrPath, name: str) -> Iterator[Any]:
    from openpyxl import load_workbook  # imported here: only workbooks need it
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        # read_only streams the sheet's XML row by row: memory stays flat for a big sheet.
        workbook = load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise ImportFormatError(f"{name!r} cannot be read as an Excel workbook (.xlsx): {exc}. "
                                "Save it again from Excel as .xlsx, or as CSV UTF-8.") from exc
    try:
        yield workbook
    finally:
        workbook.close()


def _sheet(workbook: Any, sheet: str, name: str) -> Any:
    if not workbook.sheetnames:
        raise ImportFormatError(f"{name!r} has no sheets")
    if not sheet:
        return workbook[workbook.sheetnames[0]]
    if sheet not in workbook.sheetnames:
        raise ImportFormatError(f"{name!r} has no sheet {sheet!r}; its sheets are: "
                                f"{', '.join(repr(s) for s in workbook.sheetnames)}")
    return workbook[sheet]


def _xlsx_value(value: object) -> object:
    """A cell as JSON can hold it: whole floats as integers (Excel stores 3 as 3.0), dates as ISO text."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return str(value)
    return value


def _islice(values: Generator[tuple[int, object], None, None], limit: int) -> Iterator[tuple[int, object]]:
    # itertools.islice would leave the generator (and its open file) suspended
    # until garbage collection; closing it releases the file now.
    try:
        for count, item in enumerate(values):
            if count >= limit:
                return
            yield item
    finally:
        values.close()


# --- CSV ---------------------------------------------------------------------


def _read_csv_header(reader: Iterator[list[Any]], name: str, *, max_columns: int) -> list[str]:
    _raise_csv_field_limit()
    header = next(reader, None)
    if header is None:
        raise ImportFormatError(f"{name!r} is empty; the first line must be a header naming the columns")
    _check_column_count(len(header), max_columns, name)
    header = [_cell_text(column).strip() for column in header]
    while header and not header[-1]:
        header.pop()  # a workbook's empty cells right of the header
    if not any(header):
        raise ImportFormatError(
            f"{name!r} has a blank first line; the first line must be a header naming the columns"
        )
    return header


def _raise_csv_field_limit() -> None:
    # The limit is process-wide, so only ever raise it: lowering it could
    # break another reader in the same process.
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)


def _iter_table_rows(path: StrPath, fmt: str, name: str, rules: _RowRules, *, max_columns: int,
                     dialect: Dialect) -> Iterator[ParsedRow | RowError]:
    columns = rules.columns
    workbook = fmt == "xlsx"
    with _table(path, fmt, name, dialect) as reader:
        header = _read_csv_header(reader, name, max_columns=max_columns)
        mapped = [c for c in (columns.text, columns.label, columns.external_id) if c is not None]
        if columns.metadata is None:
            skipped = {*mapped, *columns.dropped}
            metadata_columns = [c for c in header if c and c not in skipped]
        else:
            metadata_columns = list(columns.metadata)
        _check_csv_header(header, [*mapped, *metadata_columns], name)
        position = {column: index for index, column in enumerate(header)}
        text_at = position[columns.text]
        label_at = None if columns.label is None else position[columns.label]
        id_at = None if columns.external_id is None else position[columns.external_id]
        metadata_at = [(column, position[column]) for column in metadata_columns]
        width = len(header)
        build = _build_row

        # Rows are numbered as a spreadsheet shows them (header = row 1), which
        # matches the line number unless a quoted text spans several lines.
        row_number = 1
        last_line = reader.line_num
        try:
            for cells in reader:
                row_number += 1
                first_line, last_line = last_line + 1, reader.line_num
                if workbook:
                    cells = _fit_workbook_row(cells, width)
                if not cells:
                    continue  # a blank line, usually a trailing one
                if len(cells) != width:
                    yield RowError(
                        row_number, _describe_width_mismatch(len(cells), width, first_line, row_number, dialect)
                    )
                    continue
                text = cells[text_at]
                if workbook:
                    # An empty cell means "no value", not the value "".
                    metadata = {column: value for column, at in metadata_at
                                if not isinstance(value := cells[at], str) or value.strip()}
                    if not isinstance(text, str):
                        text = _cell_text(text)
                else:
                    metadata = {column: value for column, at in metadata_at if (value := cells[at]).strip()}
                yield build(
                    row_number,
                    text=text,
                    label=_MISSING if label_at is None else cells[label_at],
                    external_id=_MISSING if id_at is None else cells[id_at],
                    metadata=metadata,
                    rules=rules,
                )
        except csv.Error as exc:
            raise ImportFormatError(f"{name!r} cannot be read as CSV at line {reader.line_num}: {exc}") from exc


def _fit_workbook_row(cells: list[object], width: int) -> list[object]:
    """A sheet row cut or padded to the header's width; [] for a row with no values."""
    if len(cells) > width and all(cell == "" for cell in cells[width:]):
        cells = cells[:width]
    if all(cell == "" for cell in cells):
        return []
    if len(cells) < width:
        cells = cells + [""] * (width - len(cells))
    return cells


def _check_csv_header(header: list[str], wanted: list[str], name: str) -> None:
    # Counted once: `column in header` and `header.count(column)` per wanted column made this
    # quadratic in the number of columns (100,000 columns held a worker for minutes).
    counts = Counter(header)
    missing = [column for column in dict.fromkeys(wanted) if column not in counts]
    if missing:
        existing = ", ".join(repr(column) for column in header if column)
        noun = "column" if len(missing) == 1 else "columns"
        message = (
            f"{name!r} has no {noun} {', '.join(repr(c) for c in missing)}; "
            f"the columns in its header are: {existing}"
        )
        if len(header) == 1 and any(separator in header[0] for separator in DELIMITERS):
            message += (" — the file looks separated by semicolons, tabs or pipes; choose the delimiter on the "
                        "upload page")
        raise ImportFormatError(message)
    duplicated = [column for column in dict.fromkeys(wanted) if counts[column] > 1]
    if duplicated:
        raise ImportFormatError(
            f"{name!r} has more than one column named {', '.join(repr(c) for c in duplicated)}; "
            "rename them so each column name is unique"
        )


def _describe_width_mismatch(found: int, expected: int, first_line: int, row_number: int,
                             dialect: Dialect = DEFAULT_DIALECT) -> str:
    reason = f"row has {found} field{'s' if found != 1 else ''} but the header has {expected}"
    if first_line != row_number:
        # Text editors number lines, not rows; after a multi-line text the
        # two drift apart and the user needs the line to find the row.
        reason += f" (it starts on line {first_line} of the file)"
    word = DELIMITERS.get(dialect.delimiter, repr(dialect.delimiter)).split(" (")[0]
    if found > expected:
        return reason + f" — a text containing a {word} must be wrapped in double quotes"
    return reason + f" — check for a missing {word} or an unclosed double quote on an earlier row"


def _count_csv_records(path: StrPath) -> int:
    line_feeds = carriage_returns = 0
    last = b""
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            line_feeds += chunk.count(b"\n")
            carriage_returns += chunk.count(b"\r")
            last = chunk[-1:]
    if not last:
        return 0
    # Classic Mac files end lines with a bare "\r"; taking the larger count
    # keeps the bound an upper bound for them too.
    lines = max(line_feeds, carriage_returns) + (0 if last in (b"\n", b"\r") else 1)
    return max(lines - 1, 0)


# --- JSON Lines and JSON arrays ----------------------------------------------


def _iter_json_values(path: StrPath, fmt: str, name: str, encoding: str = "utf-8"
                      ) -> Generator[tuple[int, object], None, None]:
    """(row number, decoded value) per row; a JSONL line that is not JSON yields a _Invalid."""
    with _open_text(path, name, encoding) as f:
        if fmt == "jsonl":
            for line_number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    # Without its line break, so an error at the end of the
                    # line reports a column on this line rather than the next.
                    yield line_number, json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as exc:
                    yield line_number, _Invalid(f"invalid JSON at column {exc.colno}: {exc.msg}")
                except RecursionError:
                    yield line_number, _Invalid(_TOO_DEEP)
        elif fmt == "json":
            yield from enumerate(_JsonArrayStream(f, name).elements(), start=1)
        else:
            raise ValueError(f"unknown import format {fmt!r}; expected csv, jsonl or json")


def _iter_json_rows(path: StrPath, fmt: str, name: str, rules: _RowRules, encoding: str = "utf-8"
                    ) -> Iterator[ParsedRow | RowError]:
    columns = rules.columns
    mapped = {c for c in (columns.text, columns.label, columns.external_id) if c is not None} | set(columns.dropped)
    for row_number, value in _iter_json_values(path, fmt, name, encoding):
        if isinstance(value, _Invalid):
            yield RowError(row_number, str(value))
            continue
        if not isinstance(value, dict):
            where = "line" if fmt == "jsonl" else "element"
            yield RowError(row_number, f"{where} is {_json_kind(value)}, not an object ({{...}})")
            continue
        if columns.metadata is None:
            metadata = {key: item for key, item in value.items() if key not in mapped}
        else:
            metadata = {key: value[key] for key in columns.metadata if key in value}
        yield _build_row(
            row_number,
            text=value.get(columns.text, _MISSING),
            label=_MISSING if columns.label is None else value.get(columns.label, _MISSING),
            external_id=_MISSING if columns.external_id is None else value.get(columns.external_id, _MISSING),
            metadata=metadata,
            rules=rules,
        )


class _JsonArrayStream:
    """Decodes a top-level JSON array one element at a time, reading the file in chunks.

    json.load would hold the whole document and every decoded object in
    memory at once; this holds one chunk and one element.
    """

    def __init__(self, f: IO[str], name: str, chunk_chars: int = _JSON_CHUNK_CHARS) -> None:
        self._file = f
        self._name = name
        self._chunk_chars = chunk_chars
        self._decoder = json.JSONDecoder()
        self._buffer = ""
        self._pos = 0
        self._at_eof = False
        # Where the buffer starts in the file, so errors can name a line.
        self._line = 1
        self._column = 1

    def elements(self) -> Iterator[object]:
        first = self._peek()
        if first == "":
            raise ImportFormatError(f"{self._name!r} is empty; expected a JSON array of objects: [{{...}}, {{...}}]")
        if first != "[":
            if first == "{":
                hint = (
                    "holds a single JSON object, not an array of objects — wrap the objects in [ ] "
                    "or upload one object per line as JSON Lines (.jsonl)"
                )
            else:
                hint = f"must hold a JSON array of objects ([{{...}}, {{...}}]) but starts with {first!r}"
            raise ImportFormatError(f"{self._name!r} {hint}")
        self._pos += 1
        if self._peek() == "]":
            self._pos += 1
            self._expect_end()
            return
        index = 0
        while True:
            index += 1
            yield self._decode(index)
            separator = self._peek()
            if separator == ",":
                self._pos += 1
                self._peek()
            elif separator == "]":
                self._pos += 1
                self._expect_end()
                return
            elif separator == "":
                raise ImportFormatError(
                    f"{self._name!r} ends after element {index} without the closing ']' — the file looks truncated"
                )
            else:
                raise self._error(self._pos, f"expected ',' or ']' after element {index}, found {separator!r}")

    def _decode(self, index: int) -> object:
        while True:
            if len(self._buffer) - self._pos < self._chunk_chars:
                self._read()
            try:
                value, end = self._decoder.raw_decode(self._buffer, self._pos)
            except json.JSONDecodeError as exc:
                if self._may_be_cut_off(exc):
                    # Grow geometrically so one huge element costs O(size) to
                    # decode rather than O(size²) from retrying per chunk.
                    self._read(len(self._buffer) - self._pos)
                    continue
                raise self._error(exc.pos, f"invalid JSON in element {index}: {exc.msg}") from None
            except RecursionError:
                raise self._error(self._pos, f"element {index}: {_TOO_DEEP}") from None
            if end + _JSON_LOOKAHEAD >= len(self._buffer) and self._read(len(self._buffer) - self._pos):
                continue
            self._pos = end
            return value

    def _may_be_cut_off(self, exc: json.JSONDecodeError) -> bool:
        if self._at_eof:
            return False
        # An unterminated string reports where the string starts, however
        # far from the end of the buffer that is.
        return exc.pos + _JSON_LOOKAHEAD >= len(self._buffer) or exc.msg.startswith("Unterminated string")

    def _peek(self) -> str:
        """Skip whitespace; the next character, or "" at end of file."""
        while True:
            self._pos = _JSON_WHITESPACE.match(self._buffer, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._buffer):
                return self._buffer[self._pos]
            if not self._read():
                return ""

    def _read(self, at_least: int = 0) -> bool:
        """Append the next chunk (or `at_least` characters) to the buffer; False at end of file."""
        if self._at_eof:
            return False
        chunk = self._file.read(max(at_least, self._chunk_chars))
        if not chunk:
            self._at_eof = True
            return False
        # Only now: a caller that gets False may still hold offsets into the buffer.
        self._drop_consumed()
        self._buffer += chunk
        return True

    def _drop_consumed(self) -> None:
        consumed = self._buffer[: self._pos]
        newlines = consumed.count("\n")
        if newlines:
            self._line += newlines
            self._column = len(consumed) - consumed.rfind("\n")
        else:
            self._column += len(consumed)
        self._buffer = self._buffer[self._pos :]
        self._pos = 0

    def _expect_end(self) -> None:
        trailing = self._peek()
        if trailing:
            raise self._error(self._pos, f"has data after the closing ']' of the array, starting with {trailing!r}")

    def _error(self, pos: int, problem: str) -> ImportFormatError:
        before = self._buffer[:pos]
        newlines = before.count("\n")
        line = self._line + newlines
        column = pos - before.rfind("\n") if newlines else self._column + pos
        return ImportFormatError(f"{self._name!r}: {problem} (line {line}, column {column})")


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


# --- one row's rules ---------------------------------------------------------


def _build_row(
    row: int,
    *,
    text: object,
    label: object,
    external_id: object,
    metadata: dict[str, object],
    rules: _RowRules,
) -> ParsedRow | RowError:
    try:
        clean_text = _clean_text(text, rules)
        labels = _clean_labels(label, rules)
        clean_id = _clean_external_id(external_id, rules)
        if metadata:
            _check_metadata(metadata)
        return ParsedRow(row, clean_text, labels, clean_id, metadata, content_hash(clean_text))
    except _Invalid as exc:
        return RowError(row, str(exc))


def _unstorable(value: str) -> str | None:
    """Why a string cannot be stored, or None: PostgreSQL refuses NUL in text and in JSON, and a lone
    surrogate (a JSON escape like \\ud800 without its pair) has no UTF-8 form."""
    if "\x00" in value:
        return "a NUL character (\\u0000)"
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone surrogate (an unpaired \\ud800–\\udfff escape)"
    return None


def _shown(name: str) -> str:
    return repr(name if len(name) <= _NAME_SHOWN else name[:_NAME_SHOWN] + "…")


def _check_metadata(metadata: dict[str, object]) -> None:
    """Refuse metadata the JSON column cannot hold: NUL, lone surrogates, NaN/Infinity, deep nesting."""
    # The common case, a file's cells: string keys and values, checked without the walk below.
    if all(type(key) is str and type(value) is str and _unstorable(key) is None and _unstorable(value) is None
           for key, value in metadata.items()):
        return
    # A loop with a stack, not recursion: the depth is what is being checked.
    stack: list[tuple[object, int, str]] = [(metadata, 0, "")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, dict):
            if depth >= MAX_METADATA_DEPTH:
                raise _Invalid(f"metadata {where} is nested more than {MAX_METADATA_DEPTH} levels deep")
            for key, item in value.items():
                if not isinstance(key, str):
                    raise _Invalid(f"metadata key {key!r} is not a string")
                problem = _unstorable(key)
                if problem:
                    raise _Invalid(f"metadata key {_shown(key)} holds {problem}")
                stack.append((item, depth + 1, where or _shown(key)))
        elif isinstance(value, list):
            if depth >= MAX_METADATA_DEPTH:
                raise _Invalid(f"metadata {where} is nested more than {MAX_METADATA_DEPTH} levels deep")
            stack.extend((item, depth + 1, where) for item in value)
        elif isinstance(value, str):
            problem = _unstorable(value)
            if problem:
                raise _Invalid(f"metadata {where} holds {problem}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise _Invalid(f"metadata {where} is {value!r}, which JSON cannot store (e.g. NaN or 1e999); "
                           "use a finite number, null or a string")


def _clean_text(value: object, rules: _RowRules) -> str:
    key = rules.columns.text
    if value is _MISSING:
        raise _Invalid(f"missing key {key!r}")
    if not isinstance(value, str):
        raise _Invalid(f"text in {rules.field_word} {key!r} is {_json_kind(value)}, not a string")
    text = value.strip()
    if not text:
        raise _Invalid(f"empty text in {rules.field_word} {key!r}")
    problem = _unstorable(text)
    if problem:
        raise _Invalid(f"text in {rules.field_word} {key!r} holds {problem}; remove it and upload again")
    if len(text) > rules.max_text_chars:
        raise _Invalid(
            f"text is {len(text):,} characters; the limit is {rules.max_text_chars:,} "
            "— shorten it or raise LABELHUB_MAX_TEXT_CHARS"
        )
    return text


def _clean_labels(value: object, rules: _RowRules) -> tuple[str, ...]:
    # A missing, null or empty label leaves the row unlabelled, so a file can
    # mix labelled and unlabelled rows.
    if value is _MISSING or value is None:
        return ()
    if type(value) is str and not rules.multi_label:
        # The common case, one label as text: the checks below without the general machinery.
        name = value.strip()
        if not name:
            return ()
        if rules.separator not in name and len(name) <= _MAX_LABEL_CHARS and _unstorable(name) is None and (
                rules.known_labels is None or name in rules.known_labels):
            return (name,)
    key = rules.columns.label
    if isinstance(value, list):
        parts = [_label_name(item, key, rules) for item in value]
    else:
        name = _label_name(value, key, rules)
        parts = name.split(rules.separator) if rules.multi_label else [name]
    labels = tuple(dict.fromkeys(part.strip() for part in parts if part.strip()))
    if not rules.multi_label and len(labels) > 1:
        raise _Invalid(_describe_too_many(labels))
    for label in labels:
        problem = _unstorable(label)
        if problem:
            raise _Invalid(f"label {_shown(label)} holds {problem}")
        if len(label) > _MAX_LABEL_CHARS:
            raise _Invalid(f"label {_shown(label)} is {len(label):,} characters; a label name has at most "
                           f"{_MAX_LABEL_CHARS}")
    if rules.known_labels is not None:
        _check_known(labels, rules)
    return labels


def _label_name(value: object, key: str | None, rules: _RowRules) -> str:
    if isinstance(value, str):
        return value
    # Integer class ids ("label": 0) are common in exported datasets.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _Invalid(
        f"label in {rules.field_word} {key!r} is {_json_kind(value)}; expected a string or a list of strings"
    )


def _check_known(labels: tuple[str, ...], rules: _RowRules) -> None:
    known = rules.known_labels
    assert known is not None
    unknown = [label for label in labels if label not in known]
    if not unknown:
        return
    if not rules.multi_label and rules.separator in unknown[0]:
        # "a|b" in a single-label project is one (unknown) name, but if its
        # parts are known labels the user almost certainly meant several.
        parts = tuple(dict.fromkeys(p.strip() for p in unknown[0].split(rules.separator) if p.strip()))
        if len(parts) > 1 and all(part in known for part in parts):
            raise _Invalid(_describe_too_many(parts))
    names = ", ".join(repr(label) for label in unknown)
    if len(unknown) == 1:
        fix = "add it to the taxonomy or tick 'add unknown labels'"
    else:
        fix = "add them to the taxonomy or tick 'add unknown labels'"
    raise _Invalid(f"unknown label{'s' if len(unknown) > 1 else ''} {names} ({_describe_known(known)}) — {fix}")


def _describe_known(known: frozenset[str]) -> str:
    if not known:
        return "the taxonomy has no labels yet"
    names = sorted(known)
    shown = ", ".join(names[:_KNOWN_LABELS_SHOWN])
    if len(names) > _KNOWN_LABELS_SHOWN:
        shown += f", … and {len(names) - _KNOWN_LABELS_SHOWN} more"
    return f"known: {shown}"


def _describe_too_many(labels: tuple[str, ...]) -> str:
    return f"{len(labels)} labels ({', '.join(repr(label) for label in labels)}) in a single-label project"


def _clean_external_id(value: object, rules: _RowRules) -> str:
    if value is _MISSING or value is None:
        return ""
    if isinstance(value, str):
        clean = value.strip()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        clean = str(value)
    else:
        raise _Invalid(
            f"id in {rules.field_word} {rules.columns.external_id!r} is {_json_kind(value)}; "
            "expected a string or a number"
        )
    if len(clean) > _MAX_EXTERNAL_ID_CHARS:
        raise _Invalid(f"id in {rules.field_word} {rules.columns.external_id!r} is {len(clean):,} characters; "
                       f"the limit is {_MAX_EXTERNAL_ID_CHARS}")
    problem = _unstorable(clean)
    if problem:
        raise _Invalid(f"id in {rules.field_word} {rules.columns.external_id!r} holds {problem}")
    return clean


# --- span projects -------------------------------------------------------------
#
# A span project's rows carry entities, not a label: character spans on a text ({"text", "spans"}), tags on
# tokens ({"tokens", "tags"} or a CoNLL file), or nothing (plain text, tokenized here). Each row becomes a
# SpanRow with the text's token offsets, so the import stores Example.tokens once and the labelling page,
# the model and the exports never tokenize again.


class SpanRow(NamedTuple):
    row: int
    text: str
    tokens: list[tuple[int, int]]
    # None: unlabelled (to be labelled); []: labelled, no entity in it. Labels are the file's names.
    spans: list[spanformats.Span] | None
    external_id: str
    metadata: dict[str, object]
    content_hash: str


CONLL_COLUMNS: Final = ("tokens", "tags")
# A CoNLL line: a token, optional middle columns, then a tag (O or PREFIX-LABEL).
_CONLL_LINE: Final = re.compile(r"^\S+(?:[ \t]+\S+)*[ \t]+(?:O|[BILUES]-\S+)[ \t]*$")
_CONLL_SNIFF_LINES: Final = 50


def looks_like_conll(path: StrPath, encoding: str = "utf-8") -> bool:
    """Whether a .txt file is CoNLL (token per line, a tag last) rather than delimited text."""
    try:
        with open(path, encoding=encoding or "utf-8", errors="replace", newline="") as f:
            lines = [line.strip() for line in itertools.islice(f, _CONLL_SNIFF_LINES * 2)]
    except (LookupError, OSError):
        return False
    lines = [line for line in lines if line and not line.startswith("-DOCSTART-")][:_CONLL_SNIFF_LINES]
    return bool(lines) and all(_CONLL_LINE.match(line) for line in lines)


def _conll_sentences(path: StrPath, name: str, encoding: str) -> Iterator[tuple[int, list[str], list[str]]]:
    with _open_text(path, name, encoding) as f:
        try:
            yield from spanformats.parse_conll_numbered(f)
        except spanformats.SpanFormatError as exc:
            raise ImportFormatError(f"{name!r}: {exc} (a CoNLL file has a token and its tag on each line, "
                                    "a blank line between sentences)") from exc


def conll_preview(path: StrPath, name: str, encoding: str, rows: int) -> list[list[str]]:
    shown = []
    for _, tokens, tags in _conll_sentences(path, name, encoding):
        shown.append([" ".join(tokens), " ".join(tags)])
        if len(shown) >= rows:
            break
    return shown


def count_conll_sentences(path: StrPath) -> int:
    count, in_sentence = 0, False
    with open(path, "rb") as f:
        for line in f:
            if line.strip() and not line.startswith(b"-DOCSTART-"):
                if not in_sentence:
                    count += 1
                in_sentence = True
            elif not line.strip():
                in_sentence = False
    return count


def _tag_sequences(path: StrPath, fmt: str, name: str, columns: ColumnMap, dialect: Dialect
                   ) -> Iterator[Sequence[str]]:
    if fmt == "conll":
        for _, _, conll_tags in _conll_sentences(path, name, dialect.encoding):
            yield conll_tags
        return
    if fmt not in ("jsonl", "json") or columns.label is None:
        return
    for _, value in _iter_json_values(path, fmt, name, dialect.encoding):
        if isinstance(value, dict):
            tags = value.get(columns.label)
            if isinstance(tags, list) and all(isinstance(tag, str) for tag in tags):
                yield tags


def iter_span_rows(
    path: StrPath,
    fmt: str,
    columns: ColumnMap,
    *,
    language: str,
    max_text_chars: int,
    display_name: str | None = None,
    max_columns: int = DEFAULT_MAX_COLUMNS,
    dialect: Dialect = DEFAULT_DIALECT,
) -> Iterator[SpanRow | RowError]:
    """Stream a span project's file, yielding one SpanRow or RowError per row (a CoNLL file: per sentence).

    Tag schemes (IOB1/IOB2/BILOU/IOBES/IO) are detected over the whole file first, so one sentence cannot
    read as another scheme. Raises ImportFormatError for file-level problems.
    """
    name = _display_name(path, display_name)
    scheme = spanformats.detect_scheme(_tag_sequences(path, fmt, name, columns, dialect))
    if fmt == "conll":
        for number, (line, tokens, tags) in enumerate(_conll_sentences(path, name, dialect.encoding), start=1):
            yield _tagged_row(number, tokens, tags, scheme, {}, "", max_text_chars, where=f"(line {line}) ")
        return
    if fmt in ("csv", "xlsx"):
        if columns.label is not None:
            raise ImportFormatError(
                f"{name!r}: a span project takes its entities from JSON Lines ({{\"text\", \"spans\"}} or "
                "{\"tokens\", \"tags\"}) or a CoNLL file; a CSV or workbook column cannot hold them — import "
                "the text alone (no label column)"
            )
        plain = ColumnMap(text=columns.text, external_id=columns.external_id, metadata=columns.metadata,
                          dropped=columns.dropped)
        rules = _RowRules(columns=plain, known_labels=None, multi_label=False, max_text_chars=max_text_chars,
                          separator="|", field_word="column")
        for item in _iter_table_rows(path, fmt, name, rules, max_columns=max_columns, dialect=dialect):
            if isinstance(item, RowError):
                yield item
                continue
            try:
                offsets = spanformats.tokenize(item.text, language)
            except spanformats.SpanFormatError as exc:
                raise ImportFormatError(str(exc)) from exc
            yield SpanRow(item.row, item.text, offsets, None, item.external_id, item.metadata, item.content_hash)
        return
    if fmt not in ("jsonl", "json"):
        raise ValueError(f"unknown import format {fmt!r}; expected csv, xlsx, jsonl, json or conll")
    rules = _RowRules(columns=columns, known_labels=None, multi_label=False, max_text_chars=max_text_chars,
                      separator="|", field_word="key")
    mapped = {c for c in (columns.text, columns.label, columns.external_id) if c is not None} | set(columns.dropped)
    for row_number, value in _iter_json_values(path, fmt, name, dialect.encoding):
        if isinstance(value, _Invalid):
            yield RowError(row_number, str(value))
            continue
        if not isinstance(value, dict):
            where = "line" if fmt == "jsonl" else "element"
            yield RowError(row_number, f"{where} is {_json_kind(value)}, not an object ({{...}})")
            continue
        if columns.metadata is None:
            metadata = {key: item for key, item in value.items() if key not in mapped}
        else:
            metadata = {key: value[key] for key in columns.metadata if key in value}
        try:
            if metadata:
                _check_metadata(metadata)
            external_id = _clean_external_id(
                _MISSING if columns.external_id is None else value.get(columns.external_id, _MISSING), rules)
        except _Invalid as exc:
            yield RowError(row_number, str(exc))
            continue
        text = value.get(columns.text, _MISSING)
        entities = _MISSING if columns.label is None else value.get(columns.label, _MISSING)
        if isinstance(text, list):
            if not text:
                yield RowError(row_number, f"empty document: key {columns.text!r} holds no tokens")
                continue
            if entities is _MISSING or entities is None:
                entities = ["O"] * len(text)
                labelled = False
            else:
                labelled = True
            if not isinstance(entities, list):
                yield RowError(row_number, f"tags in key {columns.label!r} are {_json_kind(entities)}; "
                                           "expected a list of tags, one per token")
                continue
            row = _tagged_row(row_number, text, entities, scheme, metadata, external_id, max_text_chars,
                              key=columns.text)
            if isinstance(row, SpanRow) and not labelled:
                row = row._replace(spans=None)
            yield row
            continue
        yield _text_row(row_number, text, entities, columns, metadata, external_id, language, max_text_chars)


def _tagged_row(row: int, tokens: object, tags: object, scheme: str, metadata: dict[str, object],
                external_id: str, max_text_chars: int, *, where: str = "", key: str = "tokens"
                ) -> SpanRow | RowError:
    if not isinstance(tokens, list) or not tokens:
        return RowError(row, f"{where}empty document: key {key!r} holds no tokens")
    if not isinstance(tags, list):
        return RowError(row, f"{where}tags are {_json_kind(tags)}; expected a list of tags, one per token")
    if any(not isinstance(token, str) for token in tokens):
        bad = next(i for i, token in enumerate(tokens) if not isinstance(token, str))
        return RowError(row, f"{where}token {bad + 1} is {_json_kind(tokens[bad])}, not a string")
    try:
        text, offsets, spans = spanformats.spans_from_tags(tokens, tags, scheme)
    except spanformats.SpanFormatError as exc:
        return RowError(row, f"{where}{exc}")
    problem = _text_problem(text, max_text_chars)
    if problem is None:
        problem = _span_label_problem(spans)
    if problem:
        return RowError(row, where + problem)
    return SpanRow(row, text, offsets, spans, external_id, metadata, content_hash(text))


def _text_row(row: int, text: object, entities: object, columns: ColumnMap, metadata: dict[str, object],
              external_id: str, language: str, max_text_chars: int) -> SpanRow | RowError:
    key = columns.text
    if text is _MISSING:
        return RowError(row, f"missing key {key!r}")
    if not isinstance(text, str):
        return RowError(row, f"text in key {key!r} is {_json_kind(text)}, not a string (or a list of tokens)")
    problem = _text_problem(text, max_text_chars)
    if problem:
        return RowError(row, problem)
    try:
        offsets = spanformats.tokenize(text, language)
    except spanformats.SpanFormatError as exc:
        raise ImportFormatError(str(exc)) from exc
    if entities is _MISSING or entities is None:
        return SpanRow(row, text, offsets, None, external_id, metadata, content_hash(text))
    if not isinstance(entities, list):
        return RowError(row, f"spans in key {columns.label!r} are {_json_kind(entities)}; expected a list of "
                             '{"start", "end", "label"} objects')
    # [start, end, label] triples (doccano's JSONL) read as objects.
    given = [{"start": item[0], "end": item[1], "label": item[2]} if isinstance(item, list) and len(item) == 3
             else item for item in entities]
    try:
        spans = spanformats.check_spans(text, offsets, given)
    except spanformats.SpanFormatError as exc:
        return RowError(row, str(exc))
    problem = _span_label_problem(spans)
    if problem:
        return RowError(row, problem)
    return SpanRow(row, text, offsets, spans, external_id, metadata, content_hash(text))


def _text_problem(text: str, max_text_chars: int) -> str | None:
    if not text.strip():
        return "empty document: the text is empty or only whitespace"
    problem = _unstorable(text)
    if problem:
        return f"the text holds {problem}; remove it and upload again"
    if len(text) > max_text_chars:
        return (f"document is {len(text):,} characters; the limit is {max_text_chars:,} "
                "— split it (e.g. into paragraphs) or raise LABELHUB_MAX_TEXT_CHARS")
    return None


def _span_label_problem(spans: list[spanformats.Span]) -> str | None:
    for span in spans:
        label = span["label"]
        if len(label) > _MAX_LABEL_CHARS:
            return f"label {_shown(label)} is {len(label):,} characters; a label name has at most {_MAX_LABEL_CHARS}"
        problem = _unstorable(label)
        if problem:
            return f"label {_shown(label)} holds {problem}"
    return None
