"""Write the span-import fixtures of tests/data/ner from ../shared/data (run once; the output is committed).

Only sets whose licence allows redistribution are shipped: SEC filings NER (CC BY 3.0) and LeNER-Br (MIT).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[3] / "shared" / "data"
sys.path.insert(0, str(HERE.parents[2]))

from projects.spanformats import spans_from_tags  # noqa: E402


def head_sentences(path: Path, sentences: int) -> str:
    """The file up to the end of its n-th sentence (blank-line separated), -DOCSTART- kept."""
    out, seen = [], 0
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        out.append(line)
        if not line.strip() and any(o.strip() and not o.startswith("-DOCSTART-") for o in out[-2:-1]):
            seen += 1
            if seen >= sentences:
                break
    return "".join(out)


def main() -> None:
    (HERE / "sec_filings_fin5_head.txt").write_text(
        head_sentences(SHARED / "sec_filings_ner/original/FIN5.txt", 40), encoding="utf-8")
    (HERE / "lener_br_train_head.conll").write_text(
        head_sentences(SHARED / "lener_br/original/train.conll", 30), encoding="utf-8")
    lines = (SHARED / "sec_filings_ner/train.jsonl").read_text(encoding="utf-8").splitlines()[:60]
    (HERE / "sec_filings_tokens_tags.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with (HERE / "sec_filings_spans.jsonl").open("w", encoding="utf-8") as out:
        for line in lines:
            row = json.loads(line)
            text, _, spans = spans_from_tags(row["tokens"], row["tags"])
            out.write(json.dumps({"text": text, "spans": spans}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
