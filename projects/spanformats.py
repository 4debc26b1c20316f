"""Span formats: tokens, tag schemes and character spans, with no Django in sight.

Span projects store an example's tokens as character offsets and its entities as character spans on those
tokens. Users bring entities in other shapes: tokens with IOB1/IOB2/BILOU/IOBES/IO tags (JSONL or CoNLL files)
or character spans from another tool. This module converts between those shapes and says precisely what is wrong
when the input is inconsistent, so the import, the exports, the labelling page and the ML harness all agree on
one definition. It imports only spaCy (for its rule-based tokenizer, which needs no downloaded model), so it
can be used and tested alone.

Messages count tokens, spans and lines from 1, as a person reading the file would.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from typing import Any, TypedDict

# spaCy languages offered to span projects: each has a rule-based tokenizer in spacy.blank(code) that needs no
# model download. Codes are spaCy's (ISO 639-1).
LANGUAGES: dict[str, str] = {
    "en": "English",
    "pt": "Portuguese",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "nl": "Dutch",
    "it": "Italian",
    "da": "Danish",
    "sv": "Swedish",
    "nb": "Norwegian Bokmål",
    "fi": "Finnish",
    "pl": "Polish",
    "ro": "Romanian",
    "el": "Greek",
    "ru": "Russian",
    "tr": "Turkish",
    "xx": "Other (multi-language rules)",
}

SCHEMES = ("IOB2", "IOB1", "BILOU", "IOBES", "IO")


class SpanFormatError(ValueError):
    """Input whose tokens, tags or spans do not fit together; the message says where and what."""


class Span(TypedDict):
    start: int
    end: int
    label: str


@cache
def _tokenizer(language: str) -> Any:
    import spacy  # imported here: importing spaCy costs about a second, and most callers never tokenize

    try:
        return spacy.blank(language).tokenizer
    except (ImportError, KeyError, ValueError) as exc:  # spaCy raises ImportError for an unknown language code
        raise SpanFormatError(f"'{language}' is not a language spaCy can tokenize") from exc


def tokenize(text: str, language: str) -> list[tuple[int, int]]:
    """Character offsets [(start, end), ...] of the text's tokens, whitespace dropped."""
    if language not in LANGUAGES:
        raise SpanFormatError(
            f"'{language}' is not a supported language; choose one of {', '.join(sorted(LANGUAGES))}"
        )
    doc = _tokenizer(language)(text)
    return [(tok.idx, tok.idx + len(tok.text)) for tok in doc if not tok.text.isspace() and tok.text]


def _split_tag(tag: str, index: int, token: str) -> tuple[str, str]:
    """('B', 'PER') from 'B-PER'; ('O', '') from 'O'."""
    if tag == "O":
        return "O", ""
    prefix, sep, label = tag.partition("-")
    if not sep or prefix not in {"B", "I", "L", "U", "E", "S"} or not label.strip():
        raise SpanFormatError(
            f"token {index + 1} ({token!r}): tag {tag!r} is neither O nor PREFIX-LABEL "
            "with prefix B, I, L, U, E or S (e.g. B-PER)"
        )
    return prefix, label


def detect_scheme(tag_sequences: Iterable[Sequence[str]]) -> str:
    """The tag scheme of one or more tag sequences: IOB2, IOB1, BILOU, IOBES or IO.

    Call it over a whole file so that one sentence cannot pass for another scheme (a sentence of an IOB2 file
    whose entity starts with I- is an error, not an IO sentence).
    """
    prefixes: set[str] = set()
    b_starts_chunk = False
    for tags in tag_sequences:
        previous = "O"
        for tag in tags:
            prefix, _, label = tag.partition("-")
            if tag != "O":
                prefixes.add(prefix)
                if prefix == "B":
                    prev_prefix, _, prev_label = previous.partition("-")
                    if previous == "O" or prev_label != label:
                        b_starts_chunk = True
            previous = tag
    if prefixes & {"L", "U"}:
        return "BILOU"
    if prefixes & {"E", "S"}:
        return "IOBES"
    if "B" in prefixes:
        # IOB1 uses B- only between two adjacent entities of the same type; a B- after O or after another type
        # means every entity starts with B- (IOB2).
        return "IOB2" if b_starts_chunk else "IOB1"
    return "IO"


def spans_from_tags(
    tokens: Sequence[str], tags: Sequence[str], scheme: str | None = None
) -> tuple[str, list[tuple[int, int]], list[Span]]:
    """Text (tokens joined by single spaces), token offsets and spans (label = the tag's label name).

    `scheme` is detected from these tags when not given; pass the scheme detected over the whole file
    (detect_scheme) to hold every sentence to it.
    """
    if len(tokens) != len(tags):
        raise SpanFormatError(f"{len(tokens)} tokens but {len(tags)} tags; each token needs exactly one tag")
    for i, token in enumerate(tokens):
        if not isinstance(token, str) or not token.strip():
            raise SpanFormatError(f"token {i + 1} is empty or not a string ({token!r})")
    for i, tag in enumerate(tags):
        if not isinstance(tag, str):
            raise SpanFormatError(f"token {i + 1} ({tokens[i]!r}): tag {tag!r} is not a string")
    if scheme is None:
        scheme = detect_scheme([tags])
    if scheme not in SCHEMES:
        raise SpanFormatError(f"unknown tag scheme {scheme!r}; use one of {', '.join(SCHEMES)}")

    offsets: list[tuple[int, int]] = []
    position = 0
    for token in tokens:
        offsets.append((position, position + len(token)))
        position += len(token) + 1
    text = " ".join(tokens)

    spans: list[Span] = []
    open_label = ""  # label of the entity being read, "" when outside one
    open_start = 0  # index of its first token

    def close(end_index: int) -> None:
        spans.append(Span(start=offsets[open_start][0], end=offsets[end_index][1], label=open_label))

    for i, (token, tag) in enumerate(zip(tokens, tags, strict=True)):
        prefix, label = _split_tag(tag, i, token)
        where = f"token {i + 1} ({token!r})"
        if scheme in {"BILOU", "IOBES"}:
            end_prefix, single_prefix = ("L", "U") if scheme == "BILOU" else ("E", "S")
            allowed = {"B", "I", end_prefix, single_prefix}
            if prefix not in allowed | {"O"}:
                raise SpanFormatError(
                    f"{where}: tag {tag!r} is not a {scheme} tag (prefixes {', '.join(sorted(allowed))})"
                )
            if prefix in {"O", "B", single_prefix} and open_label:
                raise SpanFormatError(
                    f"{where}: {tag} comes before {open_label} (from token {open_start + 1}) "
                    f"was closed with {end_prefix}-{open_label}"
                )
            if prefix in {"I", end_prefix}:
                if not open_label:
                    raise SpanFormatError(f"{where}: {tag} follows {_previous(tags, i)} (no B-{label} before it)")
                if label != open_label:
                    raise SpanFormatError(f"{where}: {tag} continues B-{open_label} from token {open_start + 1}")
                if prefix == end_prefix:
                    close(i)
                    open_label = ""
            elif prefix == "B":
                open_label, open_start = label, i
            elif prefix == single_prefix:
                open_label, open_start = label, i
                close(i)
                open_label = ""
            continue

        # IOB2, IOB1 and IO: an entity ends where the next tag does not continue it.
        if scheme == "IO" and prefix != "O" and prefix != "I":
            raise SpanFormatError(f"{where}: tag {tag!r} is not an IO tag (only I-LABEL and O)")
        continues = prefix == "I" and open_label == label
        if open_label and not continues:
            close(i - 1)
            open_label = ""
        if prefix == "O" or continues:
            continue
        if prefix == "B":  # in IOB1 too: a B- after O or another type still starts an entity (lenient)
            open_label, open_start = label, i
        elif prefix == "I":
            if scheme == "IOB2":
                raise SpanFormatError(f"{where}: {tag} follows {_previous(tags, i)} (no B-{label} before it)")
            open_label, open_start = label, i
        else:
            raise SpanFormatError(f"{where}: tag {tag!r} is not an {scheme} tag (prefixes B and I)")
    if open_label:
        if scheme in {"BILOU", "IOBES"}:
            end_prefix = "L" if scheme == "BILOU" else "E"
            raise SpanFormatError(
                f"token {len(tokens)} ({tokens[-1]!r}): the sentence ends inside B-{open_label} "
                f"(from token {open_start + 1}) with no {end_prefix}-{open_label}"
            )
        close(len(tokens) - 1)
    return text, offsets, spans


def _previous(tags: Sequence[str], i: int) -> str:
    return "the start of the sentence" if i == 0 else tags[i - 1]


def _span_token_range(offsets: Sequence[tuple[int, int]], starts: list[int], span: Span) -> tuple[int, int]:
    first = bisect.bisect_left(starts, span["start"])
    last = bisect.bisect_right(starts, span["end"] - 1) - 1
    if (
        first >= len(offsets)
        or offsets[first][0] != span["start"]
        or last < first
        or offsets[last][1] != span["end"]
    ):
        raise SpanFormatError(
            f"span {span['start']}-{span['end']} ({span['label']}) is not on token boundaries"
        )
    return first, last


def tags_from_spans(offsets: Sequence[Sequence[int]], spans: Sequence[Span], scheme: str = "IOB2") -> list[str]:
    """One tag per token for spans on token boundaries, in IOB2 (default), IOB1, BILOU, IOBES or IO."""
    if scheme not in SCHEMES:
        raise SpanFormatError(f"unknown tag scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    pairs = [(int(start), int(end)) for start, end in offsets]
    starts = [start for start, _ in pairs]
    tags = ["O"] * len(pairs)
    ranges = sorted(
        ((*_span_token_range(pairs, starts, span), span["label"]) for span in spans), key=lambda r: r[0]
    )
    previous_end, previous_label = -2, ""
    for first, last, label in ranges:
        if any(tag != "O" for tag in tags[first : last + 1]):
            raise SpanFormatError(f"spans overlap at token {first + 1}")
        if scheme in {"BILOU", "IOBES"}:
            end_prefix, single_prefix = ("L", "U") if scheme == "BILOU" else ("E", "S")
            if first == last:
                tags[first] = f"{single_prefix}-{label}"
            else:
                tags[first] = f"B-{label}"
                for k in range(first + 1, last):
                    tags[k] = f"I-{label}"
                tags[last] = f"{end_prefix}-{label}"
        else:
            if scheme == "IOB2":
                start_prefix = "B"
            elif scheme == "IOB1":
                start_prefix = "B" if previous_end == first - 1 and previous_label == label else "I"
            else:  # IO cannot mark where two adjacent entities of one type meet; they read back as one
                start_prefix = "I"
            tags[first] = f"{start_prefix}-{label}"
            for k in range(first + 1, last + 1):
                tags[k] = f"I-{label}"
        previous_end, previous_label = last, label
    return tags


def _nearest(sorted_values: list[int], value: int) -> str:
    i = bisect.bisect_left(sorted_values, value)
    candidates = []
    if i > 0:
        candidates.append(sorted_values[i - 1])
    if i < len(sorted_values):
        candidates.append(sorted_values[i])
    return " or ".join(str(c) for c in candidates) if candidates else "none (the text has no tokens)"


def check_spans(text: str, offsets: Sequence[Sequence[int]], spans: Sequence[Any]) -> list[Span]:
    """The spans as sorted Span dicts, or SpanFormatError saying which span is wrong and why.

    Checks: each span is {start, end, label} with integer offsets inside the text, start before end, a label,
    not only whitespace, starting at a token start and ending at a token end, and no two spans overlapping.
    """
    token_starts = sorted(int(start) for start, _ in offsets)
    token_ends = sorted(int(end) for _, end in offsets)
    start_set, end_set = set(token_starts), set(token_ends)
    checked: list[tuple[int, Span]] = []
    for n, span in enumerate(spans, start=1):
        if not isinstance(span, dict) or not {"start", "end", "label"} <= span.keys():
            raise SpanFormatError(f"span {n}: expected an object with start, end and label, got {span!r}")
        start, end, label = span["start"], span["end"], span["label"]
        if isinstance(start, bool) or isinstance(end, bool) or not isinstance(start, int) or not isinstance(end, int):
            raise SpanFormatError(
                f"span {n}: start and end must be whole numbers (character offsets), got {start!r}, {end!r}"
            )
        if not isinstance(label, str) or not label.strip():
            raise SpanFormatError(f"span {n} ({start}-{end}): label must be a non-empty string, got {label!r}")
        name = f"span {n} ({start}-{end} {label})"
        if start < 0 or end > len(text):
            raise SpanFormatError(f"{name}: outside the text, which has {len(text)} characters (offsets 0-{len(text)})")
        if start >= end:
            raise SpanFormatError(f"{name}: start must be before end")
        if not text[start:end].strip():
            raise SpanFormatError(f"{name}: covers only whitespace")
        problems = []
        if start not in start_set:
            problems.append(f"start {start} is not a token start (nearest: {_nearest(token_starts, start)})")
        if end not in end_set:
            problems.append(f"end {end} is not a token end (nearest: {_nearest(token_ends, end)})")
        if problems:
            raise SpanFormatError(f"{name} {text[start:end]!r}: not on token boundaries: {'; '.join(problems)}")
        checked.append((n, Span(start=start, end=end, label=label)))
    checked.sort(key=lambda item: (item[1]["start"], item[1]["end"]))
    for (n_a, a), (n_b, b) in zip(checked, checked[1:], strict=False):
        if b["start"] < a["end"]:
            raise SpanFormatError(
                f"spans {n_a} ({a['start']}-{a['end']} {a['label']}) and {n_b} ({b['start']}-{b['end']} {b['label']}) "
                "overlap; spans of one annotation must not overlap"
            )
    return [span for _, span in checked]


def parse_conll_numbered(lines: Iterable[str]) -> Iterator[tuple[int, list[str], list[str]]]:
    """(first line number, tokens, tags) per sentence of a CoNLL file: a token per line, its tag in the last
    column, a blank line between sentences, -DOCSTART- lines ignored."""
    tokens: list[str] = []
    tags: list[str] = []
    first_line = 0
    for line_no, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            if tokens:
                yield first_line, tokens, tags
                tokens, tags = [], []
            continue
        columns = line.split()
        if columns[0] == "-DOCSTART-":
            continue
        if len(columns) < 2:
            raise SpanFormatError(
                f"line {line_no}: expected a token and its tag separated by whitespace, got {line.strip()!r}"
            )
        if not tokens:
            first_line = line_no
        tokens.append(columns[0])
        tags.append(columns[-1])
    if tokens:
        yield first_line, tokens, tags


def parse_conll(lines: Iterable[str]) -> Iterator[tuple[list[str], list[str]]]:
    """(tokens, tags) per sentence of a CoNLL file (see parse_conll_numbered)."""
    for _, tokens, tags in parse_conll_numbered(lines):
        yield tokens, tags
