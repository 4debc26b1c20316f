"""projects.spanformats: tokens, tag schemes and char spans, and the messages bad input gets.

Property tests: any set of non-overlapping spans on token boundaries survives spans → tags → spans in every
scheme that can represent it, and check_spans accepts what spans_from_tags produces.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projects.spanformats import (
    SCHEMES,
    SpanFormatError,
    check_spans,
    detect_scheme,
    parse_conll,
    spans_from_tags,
    tags_from_spans,
    tokenize,
)

NER = Path(__file__).resolve().parent / "data" / "ner"


# --- tokenize ---------------------------------------------------------------------------------------------------


def test_tokenize_gives_offsets_without_whitespace_tokens():
    text = "Peter Blackburn, of Brussels.\n\n  Hi"
    offsets = tokenize(text, "en")
    assert [text[s:e] for s, e in offsets] == ["Peter", "Blackburn", ",", "of", "Brussels", ".", "Hi"]
    assert tokenize("", "en") == [] and tokenize("   \n", "en") == []


def test_tokenize_follows_the_languages_rules():
    text = "O Sr. Silva recorreu."
    assert [text[s:e] for s, e in tokenize(text, "pt")] == ["O", "Sr.", "Silva", "recorreu", "."]


def test_tokenize_refuses_an_unknown_language():
    with pytest.raises(SpanFormatError, match="'zz' is not a supported language"):
        tokenize("x", "zz")


# --- tags -> spans ----------------------------------------------------------------------------------------------


def test_spans_from_iob2_tags():
    text, offsets, spans = spans_from_tags(["Peter", "Blackburn", "in", "Paris", "Lyon"],
                                           ["B-PER", "I-PER", "O", "B-LOC", "B-LOC"])
    assert text == "Peter Blackburn in Paris Lyon"
    assert offsets == [(0, 5), (6, 15), (16, 18), (19, 24), (25, 29)]
    assert spans == [{"start": 0, "end": 15, "label": "PER"}, {"start": 19, "end": 24, "label": "LOC"},
                     {"start": 25, "end": 29, "label": "LOC"}]


@pytest.mark.parametrize(("tags", "scheme"), [
    (["I-PER", "I-PER", "O", "I-LOC", "B-LOC"], "IOB1"),
    (["B-PER", "L-PER", "O", "U-LOC", "U-LOC"], "BILOU"),
    (["B-PER", "E-PER", "O", "S-LOC", "S-LOC"], "IOBES"),
    (["B-PER", "I-PER", "O", "B-LOC", "B-LOC"], "IOB2"),
])
def test_every_scheme_is_detected_and_reads_the_same_entities(tags, scheme):
    assert detect_scheme([tags]) == scheme
    _, _, spans = spans_from_tags(["Peter", "Blackburn", "in", "Paris", "Lyon"], tags)
    assert [(s["start"], s["end"], s["label"]) for s in spans] == [(0, 15, "PER"), (19, 24, "LOC"), (25, 29, "LOC")]


def test_io_tags_join_adjacent_tokens_of_one_type():
    assert detect_scheme([["I-PER", "I-PER", "O", "I-LOC"]]) == "IO"
    _, _, spans = spans_from_tags(["a", "b", "c", "d"], ["I-PER", "I-PER", "O", "I-LOC"])
    assert [(s["start"], s["end"]) for s in spans] == [(0, 3), (6, 7)]


@pytest.mark.parametrize(("tokens", "tags", "scheme", "message"), [
    (["Mr", "Peter", "Blackburn", "and", "Smith"], ["O", "B-PER", "I-PER", "O", "I-PER"], None,
     "token 5 ('Smith'): I-PER follows O (no B-PER before it)"),
    (["Smith"], ["I-PER"], "IOB2", "token 1 ('Smith'): I-PER follows the start of the sentence (no B-PER"),
    (["Acme", "Corp"], ["B-ORG", "I-PER"], None, "token 2 ('Corp'): I-PER follows B-ORG (no B-PER before it)"),
    (["a", "b"], ["B-PER"], None, "2 tokens but 1 tags"),
    (["a", "b"], ["B-PER", "X"], None, "token 2 ('b'): tag 'X' is neither O nor PREFIX-LABEL"),
    (["a", ""], ["O", "O"], None, "token 2 is empty"),
    (["a", "b", "c"], ["B-PER", "I-PER", "O"], "BILOU", "token 3 ('c'): O comes before PER (from token 1) was "
                                                        "closed with L-PER"),
    (["a", "b"], ["B-PER", "I-PER"], "BILOU", "ends inside B-PER (from token 1) with no L-PER"),
    (["a", "b"], ["B-PER", "L-ORG"], "BILOU", "token 2 ('b'): L-ORG continues B-PER from token 1"),
    (["a"], ["B-PER"], "IO", "not an IO tag"),
])
def test_inconsistent_tags_get_a_precise_message(tokens, tags, scheme, message):
    with pytest.raises(SpanFormatError) as error:
        spans_from_tags(tokens, tags, scheme)
    assert message in str(error.value)


# --- spans -> tags ----------------------------------------------------------------------------------------------


def test_tags_from_spans_in_each_scheme():
    offsets = [(0, 5), (6, 15), (16, 18), (19, 24), (25, 29)]
    spans = [{"start": 0, "end": 15, "label": "PER"}, {"start": 19, "end": 24, "label": "LOC"},
             {"start": 25, "end": 29, "label": "LOC"}]
    assert tags_from_spans(offsets, spans) == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC"]
    assert tags_from_spans(offsets, spans, "IOB1") == ["I-PER", "I-PER", "O", "I-LOC", "B-LOC"]
    assert tags_from_spans(offsets, spans, "BILOU") == ["B-PER", "L-PER", "O", "U-LOC", "U-LOC"]
    assert tags_from_spans(offsets, spans, "IOBES") == ["B-PER", "E-PER", "O", "S-LOC", "S-LOC"]
    assert tags_from_spans(offsets, spans, "IO") == ["I-PER", "I-PER", "O", "I-LOC", "I-LOC"]
    with pytest.raises(SpanFormatError, match="not on token boundaries"):
        tags_from_spans(offsets, [{"start": 1, "end": 15, "label": "PER"}])
    with pytest.raises(SpanFormatError, match="unknown tag scheme"):
        tags_from_spans(offsets, spans, "BIO3")


# --- check_spans ------------------------------------------------------------------------------------------------

TEXT = "Peter Blackburn visited Brussels ."
OFFSETS = tokenize(TEXT, "en")


@pytest.mark.parametrize(("spans", "message"), [
    ([{"start": 24, "end": 99, "label": "LOC"}], "span 1 (24-99 LOC): outside the text, which has 34 characters"),
    ([{"start": -1, "end": 5, "label": "PER"}], "outside the text"),
    ([{"start": 5, "end": 5, "label": "PER"}], "start must be before end"),
    ([{"start": 2, "end": 15, "label": "PER"}], "start 2 is not a token start (nearest: 0 or 6)"),
    ([{"start": 0, "end": 12, "label": "PER"}], "end 12 is not a token end (nearest: 5 or 15)"),
    ([{"start": 5, "end": 6, "label": "PER"}], "covers only whitespace"),
    ([{"start": 24, "end": 32, "label": "LOC"}, {"start": 0, "end": 15, "label": "PER"},
      {"start": 6, "end": 23, "label": "ORG"}],
     "spans 2 (0-15 PER) and 3 (6-23 ORG) overlap"),
    ([{"start": "0", "end": 5, "label": "PER"}], "whole numbers"),
    ([{"start": 0, "end": 5}], "expected an object with start, end and label"),
    ([{"start": 0, "end": 5, "label": ""}], "label must be a non-empty string"),
])
def test_check_spans_says_which_span_is_wrong_and_why(spans, message):
    with pytest.raises(SpanFormatError) as error:
        check_spans(TEXT, OFFSETS, spans)
    assert message in str(error.value)


def test_check_spans_returns_them_sorted():
    spans = [{"start": 24, "end": 32, "label": "LOC"}, {"start": 0, "end": 15, "label": "PER"}]
    assert check_spans(TEXT, OFFSETS, spans) == [spans[1], spans[0]]


# --- CoNLL ------------------------------------------------------------------------------------------------------


def test_parse_conll_reads_the_last_column_and_skips_docstart():
    lines = ["-DOCSTART- -X- O O", "", "EU NNP B-NP B-ORG", "rejects VBZ B-VP O", "", "", "Peter NNP B-NP B-PER",
             "Blackburn NNP I-NP I-PER"]
    assert list(parse_conll(lines)) == [(["EU", "rejects"], ["B-ORG", "O"]),
                                        (["Peter", "Blackburn"], ["B-PER", "I-PER"])]
    with pytest.raises(SpanFormatError, match="line 2: expected a token and its tag"):
        list(parse_conll(["EU B-ORG", "rejects", ""]))


def test_real_files_read_the_same_in_conll_and_jsonl():
    """SEC filings: the original IO CoNLL file and the IOB2 JSONL converted from it agree."""
    conll = list(parse_conll((NER / "sec_filings_fin5_head.txt").read_text(encoding="utf-8").splitlines()))
    rows = [json.loads(line) for line in (NER / "sec_filings_tokens_tags.jsonl").read_text().splitlines()]
    assert detect_scheme(tags for _, tags in conll) == "IO"
    assert detect_scheme(row["tags"] for row in rows) == "IOB2"
    for (tokens, tags), row in zip(conll, rows, strict=False):
        assert tokens == row["tokens"]
        assert spans_from_tags(tokens, tags, "IO")[2] == spans_from_tags(row["tokens"], row["tags"], "IOB2")[2]


# --- properties -------------------------------------------------------------------------------------------------

_word = st.text(alphabet=st.characters(blacklist_categories=("Z", "C")), min_size=1, max_size=6)
_label = st.sampled_from(["PER", "ORG", "LOC", "MISC", "B-X"])  # a label may itself contain "-"


@st.composite
def _tokens_and_spans(draw: st.DrawFn) -> tuple[list[str], list[tuple[int, int]], list[dict]]:
    tokens = draw(st.lists(_word, min_size=1, max_size=25))
    offsets, position = [], 0
    for token in tokens:
        offsets.append((position, position + len(token)))
        position += len(token) + 1
    spans, i = [], 0
    while i < len(tokens):
        if draw(st.booleans()):
            length = draw(st.integers(1, min(4, len(tokens) - i)))
            spans.append({"start": offsets[i][0], "end": offsets[i + length - 1][1], "label": draw(_label)})
            i += length
        else:
            i += 1
    return tokens, offsets, spans


def _merge_adjacent_same_label(spans: list[dict]) -> list[dict]:
    merged: list[dict] = []
    for span in spans:
        if merged and merged[-1]["label"] == span["label"] and merged[-1]["end"] + 1 == span["start"]:
            merged[-1] = {**merged[-1], "end": span["end"]}
        else:
            merged.append(dict(span))
    return merged


@given(_tokens_and_spans(), st.sampled_from(SCHEMES))
def test_spans_survive_tags_and_back(case, scheme):
    tokens, offsets, spans = case
    tags = tags_from_spans(offsets, spans, scheme)
    assert len(tags) == len(tokens)
    text, read_offsets, read = spans_from_tags(tokens, tags, scheme)
    assert text == " ".join(tokens) and read_offsets == offsets
    # IO cannot mark where two adjacent entities of one type meet: they read back as one.
    assert read == (_merge_adjacent_same_label(spans) if scheme == "IO" else spans)
    assert check_spans(text, read_offsets, read) == read


@given(_tokens_and_spans())
def test_the_detected_scheme_reads_iob2_back_whenever_an_entity_starts_with_b(case):
    tokens, offsets, spans = case
    tags = tags_from_spans(offsets, spans, "IOB2")
    if spans:
        assert detect_scheme([tags]) == "IOB2"
    assert spans_from_tags(tokens, tags)[2] == spans
