import csv
import gc
import hashlib
import io
import json
import tracemalloc
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projects.importing import (
    ColumnMap,
    ImportFormatError,
    ParsedRow,
    RowError,
    _JsonArrayStream,
    content_hash,
    count_rows,
    detect_format,
    iter_rows,
    read_columns,
)

TEXT_AND_LABEL = ColumnMap(text="text", label="label")


def write_csv(path: Path, rows: list[list[str]], *, encoding: str = "utf-8") -> Path:
    with open(path, "w", encoding=encoding, newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def parse(
    path: Path,
    fmt: str = "csv",
    columns: ColumnMap = TEXT_AND_LABEL,
    *,
    known_labels: list[str] | None = None,
    multi_label: bool = False,
    max_text_chars: int = 10_000,
    display_name: str | None = None,
) -> list[ParsedRow | RowError]:
    return list(
        iter_rows(
            path,
            fmt,
            columns,
            known_labels=known_labels,
            multi_label=multi_label,
            max_text_chars=max_text_chars,
            display_name=display_name,
        )
    )


def only_errors(results: list[ParsedRow | RowError]) -> list[RowError]:
    return [result for result in results if isinstance(result, RowError)]


def one_row(results: list[ParsedRow | RowError]) -> ParsedRow:
    assert len(results) == 1
    assert isinstance(results[0], ParsedRow), results[0]
    return results[0]


def one_error(results: list[ParsedRow | RowError]) -> RowError:
    assert len(results) == 1
    assert isinstance(results[0], RowError), results[0]
    return results[0]


# --- detect_format -----------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "fmt"),
    [("a.csv", "csv"), ("B.CSV", "csv"), ("a.tsv", "csv"), ("a.txt", "csv"), ("a.xlsx", "xlsx"),
     ("a.jsonl", "jsonl"), ("a.ndjson", "jsonl"), ("x.y.json", "json")],
)
def test_it_detects_the_format_from_the_extension(filename: str, fmt: str) -> None:
    assert detect_format(filename) == fmt


@pytest.mark.parametrize("filename", ["data.xls", "data.ods", "data"])
def test_it_rejects_other_extensions_listing_the_accepted_ones(filename: str) -> None:
    with pytest.raises(ImportFormatError) as caught:
        detect_format(filename)
    message = str(caught.value)
    assert filename in message
    for extension in (".csv", ".tsv", ".xlsx", ".jsonl", ".ndjson", ".json"):
        assert extension in message


# --- read_columns ------------------------------------------------------------


def test_it_reads_csv_columns_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes("\ufefftext, label ,source\nhello,Yes,web\n".encode())
    assert read_columns(path, "csv") == ["text", "label", "source"]


def test_it_reads_jsonl_columns_as_the_union_of_keys_in_first_seen_order(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "a.jsonl",
        ['{"text": "a", "label": "x"}', "", "not json", "[1]", '{"id": 1, "text": "b"}', '{"late": 1}'],
    )
    assert read_columns(path, "jsonl") == ["text", "label", "id", "late"]
    # Only the first three non-blank lines are sampled; one of them is not JSON.
    assert read_columns(path, "jsonl", sample_rows=3) == ["text", "label"]


def test_it_reads_json_columns_from_the_first_objects_only(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"text": "a"}, {"label": "b", "text": "c"}, {"late": 1}]))
    assert read_columns(path, "json") == ["text", "label", "late"]
    assert read_columns(path, "json", sample_rows=2) == ["text", "label"]


def test_it_refuses_to_offer_columns_for_an_empty_csv(tmp_path: Path) -> None:
    path = tmp_path / "tmp123"
    path.write_bytes(b"")
    with pytest.raises(ImportFormatError, match="'reviews.csv' is empty"):
        read_columns(path, "csv", display_name="reviews.csv")


# --- CSV -----------------------------------------------------------------------


def test_it_parses_csv_rows_numbered_as_a_spreadsheet_shows_them(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "a.csv",
        [
            ["id", "text", "label", "source", "note"],
            ["e1", "  Hello   world \n", " Yes ", "web", ""],
            ["e2", "Second\ttext", "No", "", "kept"],
        ],
    )
    first, second = parse(path, columns=ColumnMap(text="text", label="label", external_id="id"))
    assert first == ParsedRow(
        row=2,
        text="Hello   world",
        labels=("Yes",),
        external_id="e1",
        metadata={"source": "web"},
        content_hash=content_hash("Hello world"),
    )
    assert isinstance(second, ParsedRow)
    assert (second.row, second.text, second.metadata) == (3, "Second\ttext", {"note": "kept"})


def test_it_tolerates_a_utf8_byte_order_mark(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", [["text", "label"], ["café", "Yes"]], encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert one_row(parse(path)).text == "café"


def test_it_keeps_only_the_requested_metadata_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", [["text", "a", "b", "c"], ["t", "1", "2", "3"]])
    row = one_row(parse(path, columns=ColumnMap(text="text", metadata=("c", "a"))))
    assert row.metadata == {"c": "3", "a": "1"}
    assert row.labels == ()


@pytest.mark.parametrize(
    ("columns", "missing"),
    [
        (ColumnMap(text="body"), "'body'"),
        (ColumnMap(text="text", label="category"), "'category'"),
        (ColumnMap(text="text", external_id="uid"), "'uid'"),
        (ColumnMap(text="text", metadata=("source",)), "'source'"),
    ],
)
def test_it_names_a_missing_mapped_column_and_the_existing_ones(
    tmp_path: Path, columns: ColumnMap, missing: str
) -> None:
    path = write_csv(tmp_path / "upload-8f3a", [["text", "label"], ["t", "Yes"]])
    with pytest.raises(ImportFormatError) as caught:
        parse(path, columns=columns, display_name="reviews.csv")
    message = str(caught.value)
    assert "reviews.csv" in message
    assert "upload-8f3a" not in message
    assert missing in message
    assert "'text', 'label'" in message


def test_it_hints_at_semicolon_separated_files(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("text;label\nhello;Yes\n")
    with pytest.raises(ImportFormatError, match="semicolons"):
        parse(path)


def test_it_refuses_ambiguous_duplicate_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", [["text", "label", "text"], ["a", "b", "c"]])
    with pytest.raises(ImportFormatError, match="more than one column named 'text'"):
        parse(path)


@pytest.mark.parametrize("content", [b"", b"\n"])
def test_it_requires_a_header(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(content)
    with pytest.raises(ImportFormatError, match="header"):
        parse(path)


def test_it_reports_rows_with_the_wrong_number_of_fields_and_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text('text,label\nfine,Yes\ntoo, many,No\nshort\n"multi\nline",Yes\nextra,No,x\n')
    results = parse(path)
    assert [r.row for r in results] == [2, 3, 4, 5, 6]
    assert [type(r) for r in results] == [ParsedRow, RowError, RowError, ParsedRow, RowError]
    too_many, too_few, after_newline = only_errors(results)
    assert "row has 3 fields but the header has 2" in too_many.reason
    assert "double quotes" in too_many.reason
    assert "row has 1 field but the header has 2" in too_few.reason
    # Row 6 starts on line 7 because row 5's text spans two lines.
    assert "line 7" in after_newline.reason


def test_it_skips_blank_lines_in_csv(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("text,label\r\na,Yes\r\n\r\nb,No\r\n\r\n")
    assert [(r.row, r.text) for r in parse(path) if isinstance(r, ParsedRow)] == [(2, "a"), (4, "b")]


def test_it_reads_fields_larger_than_the_csv_default_limit(tmp_path: Path) -> None:
    long_text = "word " * 100_000  # 500,000 characters, past csv's 131,072 default
    path = write_csv(tmp_path / "a.csv", [["text", "label"], [long_text, "Yes"]])
    assert one_row(parse(path, max_text_chars=1_000_000)).text == long_text.strip()


def test_it_reports_undecodable_bytes_with_line_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "tmp-upload"
    head = "text,label\n" + "".join(f"row {i},Yes\n" for i in range(3000))
    path.write_bytes(head.encode() + b"caf\xe9,No\n" + b"later,Yes\n")
    with pytest.raises(ImportFormatError) as caught:
        parse(path, display_name="latin1.csv")
    message = str(caught.value)
    assert "'latin1.csv' is not valid UTF-8" in message
    assert "0xe9 on line 3002" in message
    assert f"byte offset {len(head.encode()) + 3}" in message
    assert "Re-save the file as UTF-8" in message
    assert "tmp-upload" not in message


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_it_reports_undecodable_bytes_in_json_files(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "a"
    if fmt == "jsonl":
        path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    else:
        path.write_bytes(b'[{"text": "ok"},\n {"text": "caf\xe9"}]')
    with pytest.raises(ImportFormatError, match=r"not valid UTF-8: byte 0xe9 on line 2"):
        parse(path, fmt)


# --- text ----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_it_rejects_empty_text(tmp_path: Path, text: str) -> None:
    path = write_csv(tmp_path / "a.csv", [["text", "label"], [text, "Yes"]])
    assert one_error(parse(path)) == RowError(2, "empty text in column 'text'")


def test_it_rejects_text_over_the_limit_and_accepts_text_at_it(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", [["text"], ["x" * 12_345], [" " + "y" * 10_000 + " "]])
    too_long, at_limit = parse(path, columns=ColumnMap(text="text"))
    assert too_long == RowError(
        2, "text is 12,345 characters; the limit is 10,000 — shorten it or raise LABELHUB_MAX_TEXT_CHARS"
    )
    assert isinstance(at_limit, ParsedRow)


def test_it_hashes_text_canonically() -> None:
    composed = unicodedata.normalize("NFC", "Café  au\tlait")
    decomposed = unicodedata.normalize("NFD", "Café au\n lait ")
    assert composed != decomposed
    assert content_hash(composed) == content_hash(decomposed)
    assert content_hash(composed) == hashlib.sha256("Café au lait".encode()).hexdigest()
    assert content_hash("Café au lait") != content_hash("cafe au lait")


# --- labels --------------------------------------------------------------------


def test_it_splits_multi_labels_stripped_deduplicated_in_order(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", [["text", "label"], ["t", " b | a||b |  c "], ["u", ""]])
    labelled, unlabelled = parse(path, multi_label=True)
    assert isinstance(labelled, ParsedRow) and isinstance(unlabelled, ParsedRow)
    assert labelled.labels == ("b", "a", "c")
    assert unlabelled.labels == ()


def test_it_keeps_a_single_label_containing_the_separator_whole(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", [["text", "label"], ["t", "Billing | Refunds"]])
    assert one_row(parse(path)).labels == ("Billing | Refunds",)
    assert one_row(parse(path, known_labels=["Billing | Refunds"])).labels == ("Billing | Refunds",)


def test_it_rejects_an_unknown_single_label_containing_the_separator(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", [["text", "label"], ["t", "x|y"], ["u", "Yes|No"]])
    unknown, several = parse(path, known_labels=["Yes", "No"])
    assert unknown == RowError(
        2, "unknown label 'x|y' (known: No, Yes) — add it to the taxonomy or tick 'add unknown labels'"
    )
    assert several == RowError(3, "2 labels ('Yes', 'No') in a single-label project")


def test_it_checks_labels_only_when_known_labels_are_given(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", [["text", "label"], ["t", "Maybe"], ["u", " Yes "], ["v", "yes"]])
    assert only_errors(parse(path)) == []
    maybe, yes, lowercase = parse(path, known_labels=["Yes ", "No"])
    assert maybe == RowError(
        2, "unknown label 'Maybe' (known: No, Yes) — add it to the taxonomy or tick 'add unknown labels'"
    )
    assert isinstance(yes, ParsedRow) and yes.labels == ("Yes",)
    assert isinstance(lowercase, RowError)


def test_it_lists_every_unknown_label_in_a_multi_label_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", [["text", "label"], ["t", "a|x|y"]])
    error = one_error(parse(path, known_labels=["a"], multi_label=True))
    assert error.reason.startswith("unknown labels 'x', 'y' (known: a) — add them")


# --- JSON Lines ----------------------------------------------------------------


def test_it_parses_jsonl_with_line_numbers_and_skips_blank_lines(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "a.jsonl",
        [
            '{"text": " first ", "label": "Yes", "id": 17, "score": 0.5, "tags": ["a"]}',
            "",
            "   ",
            '{"text": "second", "id": "s-2", "extra": null}',
        ],
    )
    first, second = parse(path, "jsonl", ColumnMap(text="text", label="label", external_id="id"))
    assert first == ParsedRow(
        row=1,
        text="first",
        labels=("Yes",),
        external_id="17",
        metadata={"score": 0.5, "tags": ["a"]},
        content_hash=content_hash("first"),
    )
    assert second == ParsedRow(
        row=4, text="second", labels=(), external_id="s-2", metadata={"extra": None},
        content_hash=content_hash("second"),
    )


def test_it_reports_malformed_and_non_object_jsonl_lines_and_goes_on(tmp_path: Path) -> None:
    lines = ['{"text": "ok"}', '{"text": "broken"', '["a list"]', '"text"', '{"text": "later"}']
    path = write_jsonl(tmp_path / "a.jsonl", lines)
    results = parse(path, "jsonl")
    assert [r.row for r in results] == [1, 2, 3, 4, 5]
    assert isinstance(results[0], ParsedRow) and isinstance(results[4], ParsedRow)
    assert results[1] == RowError(2, "invalid JSON at column 18: Expecting ',' delimiter")
    assert results[2] == RowError(3, "line is a list, not an object ({...})")
    assert results[3] == RowError(4, "line is a string, not an object ({...})")


def test_it_validates_jsonl_values(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "a.jsonl",
        [
            '{"body": "no text key"}',
            '{"text": 42}',
            '{"text": null}',
            '{"text": "t", "id": ["x"]}',
            '{"text": "t", "label": {"a": 1}}',
            '{"text": "t", "label": 3}',
            '{"text": "t", "id": true}',
        ],
    )
    results = parse(path, "jsonl", ColumnMap(text="text", label="label", external_id="id"))
    reasons = [r.reason if isinstance(r, RowError) else r.labels for r in results]
    assert reasons == [
        "missing key 'text'",
        "text in key 'text' is a number, not a string",
        "text in key 'text' is null, not a string",
        "id in key 'id' is a list; expected a string or a number",
        "label in key 'label' is an object; expected a string or a list of strings",
        ("3",),
        "id in key 'id' is a boolean; expected a string or a number",
    ]


@pytest.mark.parametrize(
    ("label", "multi_label", "expected"),
    [
        ('"a|b"', True, ("a", "b")),
        ('"a|b"', False, ("a|b",)),
        ('[" a ", "b", "a", ""]', True, ("a", "b")),
        ('["a"]', False, ("a",)),
        ("[]", False, ()),
        ("null", False, ()),
        ('["a", "b"]', False, "2 labels ('a', 'b') in a single-label project"),
        ('["a", 1.5]', True, "label in key 'label' is a number; expected a string or a list of strings"),
    ],
)
def test_it_reads_json_labels_as_strings_or_lists(
    tmp_path: Path, label: str, multi_label: bool, expected: tuple[str, ...] | str
) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [f'{{"text": "t", "label": {label}}}'])
    result = parse(path, "jsonl", multi_label=multi_label)[0]
    assert (result.labels if isinstance(result, ParsedRow) else result.reason) == expected


# --- JSON arrays ---------------------------------------------------------------


def test_it_parses_a_json_array_numbering_elements_from_one(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"text": "a", "label": "x", "n": 1}, 7, {"text": "b"}, None], indent=2))
    results = parse(path, "json")
    assert [r.row for r in results] == [1, 2, 3, 4]
    assert isinstance(results[0], ParsedRow) and results[0].metadata == {"n": 1}
    assert results[1] == RowError(2, "element is a number, not an object ({...})")
    assert isinstance(results[2], ParsedRow) and results[2].labels == ()
    assert results[3] == RowError(4, "element is null, not an object ({...})")


@pytest.mark.parametrize("content", ["[]", "  [ ]  \n", "\ufeff[]"])
def test_it_accepts_an_empty_json_array(tmp_path: Path, content: str) -> None:
    path = tmp_path / "a.json"
    path.write_text(content, encoding="utf-8")
    assert parse(path, "json") == []
    assert count_rows(path, "json") == 0


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "'data.json' is empty"),
        ('{"text": "a"}', "'data.json' holds a single JSON object"),
        ('"text"', "must hold a JSON array of objects"),
        ('[{"text": "a"},\n {"text": "b"},\n {"text": }]',
         r"invalid JSON in element 3: Expecting value \(line 3, column 11\)"),
        ('[{"text": "a"} {"text": "b"}]', r"expected ',' or ']' after element 1, found '\{' \(line 1, column 16\)"),
        ('[{"text": "a"},\n {"text": "b"', "invalid JSON in element 2"),
        ('[{"text": "a"},\n {"text": "b"},', "invalid JSON in element 3"),
        ('[{"text": "a"},\n {"text": "b"}', "ends after element 2 without the closing ']'"),
        ('[{"text": "a"}] x', r"data after the closing '\]'"),
    ],
)
def test_it_rejects_malformed_json_documents_with_a_position(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "upload"
    path.write_text(content)
    with pytest.raises(ImportFormatError, match=expected):
        parse(path, "json", display_name="data.json")


def test_it_locates_json_errors_far_into_a_large_file(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    elements = ",\n".join(json.dumps({"text": f"row {i}"}) for i in range(50_000))
    path.write_text(f"[{elements},\n{{bad}}]")
    with pytest.raises(ImportFormatError, match=r"element 50001: .* \(line 50001, column 2\)"):
        parse(path, "json")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)


@given(
    elements=st.lists(json_values, max_size=8),
    indent=st.sampled_from([None, 0, 2]),
    chunk_chars=st.integers(min_value=1, max_value=9),
)
@settings(max_examples=300, deadline=None)
def test_it_streams_json_arrays_exactly_like_json_loads(
    elements: list[object], indent: int | None, chunk_chars: int
) -> None:
    document = json.dumps(elements, indent=indent, ensure_ascii=False)
    stream = _JsonArrayStream(io.StringIO(document), "a.json", chunk_chars=chunk_chars)
    assert list(stream.elements()) == json.loads(document)


# --- counting ------------------------------------------------------------------


def test_it_counts_rows_for_progress_bars(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "a.csv", [["text"], ["a"], ["b"], ["c"]])
    no_final_newline = tmp_path / "b.csv"
    no_final_newline.write_text("text\na\nb")
    jsonl_path = write_jsonl(tmp_path / "a.jsonl", ['{"text": "a"}', "", '{"text": "b"}'])
    json_path = tmp_path / "a.json"
    json_path.write_text(json.dumps([{"text": "a, [b]"}, {"text": "c"}]))
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert count_rows(csv_path, "csv") == 3
    assert count_rows(no_final_newline, "csv") == 2
    assert count_rows(empty, "csv") == 0
    assert count_rows(jsonl_path, "jsonl") == 2
    assert count_rows(json_path, "json") == 2


def test_it_counts_an_upper_bound_for_csv_with_multi_line_texts(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", [["text"], ["one\ntwo"], ["three"]])
    assert count_rows(path, "csv") >= 2


# --- properties and real data --------------------------------------------------

cell_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)


@given(rows=st.lists(st.tuples(cell_text.filter(lambda t: t.strip() != ""), cell_text), max_size=20))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_it_round_trips_any_csv_written_by_csv_writer(tmp_path: Path, rows: list[tuple[str, str]]) -> None:
    path = write_csv(tmp_path / "prop.csv", [["text", "label"], *[list(row) for row in rows]])
    results = parse(path, max_text_chars=1_000)
    expected = [
        (number, text.strip(), (label.strip(),) if label.strip() else ())
        for number, (text, label) in enumerate(rows, start=2)
    ]
    assert [(r.row, r.text, r.labels) for r in results if isinstance(r, ParsedRow)] == expected
    assert count_rows(path, "csv") >= len(rows)


@pytest.mark.parametrize(
    ("dataset", "labels"),
    [
        ("legal_overruling", ["Yes", "No"]),
        (
            "cfpb_complaints",
            ["credit_card", "credit_reporting", "debt_collection", "mortgages_and_loans", "retail_banking"],
        ),
    ],
)
def test_it_parses_the_real_datasets_without_errors(dataset: str, labels: list[str], data_dir: Path) -> None:
    path = data_dir / f"{dataset}.csv"
    assert read_columns(path, "csv") == ["text", "label"]
    # The longest CFPB complaint (in the file) is 12,054 characters, so a 10,000 limit would reject it.
    results = parse(path, known_labels=labels, max_text_chars=50_000)
    assert only_errors(results) == []
    assert len(results) == count_rows(path, "csv")
    assert {label for r in results if isinstance(r, ParsedRow) for label in r.labels} == set(labels)


# --- streaming -----------------------------------------------------------------


def peak_traced_bytes_while_consuming(path: Path, fmt: str) -> tuple[int, int]:
    gc.collect()
    tracemalloc.start()
    try:
        parsed = sum(
            1
            for result in iter_rows(
                path, fmt, TEXT_AND_LABEL, known_labels=["Yes", "No"], multi_label=False, max_text_chars=10_000
            )
            if isinstance(result, ParsedRow)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return parsed, peak


def test_it_streams_a_large_csv_in_flat_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "source"])
        for i in range(200_000):
            text = f"example number {i}, with a comma and some padding text"
            writer.writerow([text, "Yes" if i % 2 else "No", "gen"])
    assert path.stat().st_size > 10 * 1024 * 1024
    parsed, peak = peak_traced_bytes_while_consuming(path, "csv")
    assert parsed == 200_000
    assert peak < 20 * 1024 * 1024


def test_it_streams_a_large_json_array_in_flat_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    with open(path, "w", encoding="utf-8") as f:
        f.write("[\n")
        for i in range(100_000):
            f.write(json.dumps({"text": f"example number {i} with some padding text", "label": "Yes", "n": i}))
            f.write(",\n" if i < 99_999 else "\n]\n")
    assert path.stat().st_size > 5 * 1024 * 1024
    parsed, peak = peak_traced_bytes_while_consuming(path, "json")
    assert parsed == 100_000
    assert peak < 20 * 1024 * 1024
