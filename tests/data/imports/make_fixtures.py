"""Write the import fixtures of this folder from real rows of ../shared/data (run from the repository root):

    .venv/bin/python tests/data/imports/make_fixtures.py ../shared/data

Each file is a way real users' files arrive: a semicolon CSV (Excel in most European locales), a
tab-separated .tsv, a pipe-separated file, Excel's "Unicode Text" (UTF-16 with a BOM, tabs), a
Windows-1252 semicolon CSV, a UTF-8 CSV with a BOM, and an .xlsx workbook with two sheets.
Sources (licences allow redistribution): hwu64 (CC BY 4.0, Liu et al. 2019) and LeNER-Br (MIT,
Luz de Araujo et al. 2018).
"""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def hwu64_rows(shared: Path, n: int, offset: int = 0) -> list[dict[str, str]]:
    """`n` rows of hwu64's test split, from 4 intents only (a small taxonomy), in file order."""
    with (shared / "hwu64" / "test.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    keep = ("alarm_query", "alarm_set", "weather_query", "music_likeness")
    picked = [row for row in rows if row["label"] in keep][offset:offset + n]
    return [{"id": f"hwu-{offset + i + 1}", "text": row["text"], "label": row["label"],
             "scenario": row["label"].split("_")[0], "client": f"client {(offset + i) % 3 + 1}"}
            for i, row in enumerate(picked)]


def lener_rows(shared: Path, n: int) -> list[dict[str, str]]:
    """`n` Portuguese sentences of LeNER-Br's test split that carry an accent and fit Windows-1252;
    the label is the first entity type the sentence mentions."""
    rows = []
    with (shared / "lener_br" / "test.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            text = " ".join(record["tokens"])
            entities = [tag[2:] for tag in record["tags"] if tag.startswith("B-")]
            if not 30 <= len(text) <= 300 or not entities or text.isascii():
                continue
            try:
                text.encode("cp1252")
            except UnicodeEncodeError:
                continue
            rows.append({"id": f"lener-{len(rows) + 1}", "text": text, "label": entities[0],
                         "cliente": f"Cliente {len(rows) % 4 + 1} Ltda."})
            if len(rows) == n:
                break
    return rows


def write_delimited(path: Path, rows: list[dict[str, str]], columns: list[str], *, delimiter: str,
                    encoding: str) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows([[row[c] for c in columns] for row in rows])
    path.write_bytes(buffer.getvalue().encode(encoding))


def main(shared: Path) -> None:
    intents = hwu64_rows(shared, 40)
    write_delimited(HERE / "intents_semicolon.csv", intents, ["text", "label", "scenario"], delimiter=";",
                    encoding="utf-8")
    write_delimited(HERE / "intents_tab.tsv", intents, ["id", "text", "label"], delimiter="\t", encoding="utf-8")
    write_delimited(HERE / "intents_pipe.csv", intents, ["text", "label"], delimiter="|", encoding="utf-8")
    write_delimited(HERE / "intents_utf16.txt", intents, ["text", "label", "client"], delimiter="\t",
                    encoding="utf-16")  # Python's utf-16 writes a BOM, as Excel does
    write_delimited(HERE / "intents_utf8_bom.csv", intents, ["text", "label"], delimiter=",", encoding="utf-8-sig")
    write_delimited(HERE / "decisoes_cp1252.csv", lener_rows(shared, 30), ["id", "text", "label", "cliente"],
                    delimiter=";", encoding="cp1252")

    from openpyxl import Workbook

    workbook = Workbook()
    first = workbook.active
    assert first is not None
    first.title = "intents"
    first.append(["text", "label", "client", "score"])
    for i, row in enumerate(intents):
        first.append([row["text"], row["label"], row["client"], i / 4])
    second = workbook.create_sheet("holdout")
    second.append(["text", "label"])
    for row in hwu64_rows(shared, 12, offset=40):
        second.append([row["text"], row["label"]])
    workbook.save(HERE / "intents.xlsx")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data"))
