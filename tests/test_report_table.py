"""The comparison table of `egc report`: HTML and Markdown show the same rows and the same best cells."""

from __future__ import annotations

import json

from egc.eval.report import markdown_table, metric_table, table_rows, write_report


def _doc(ckpt: str, kind: str, acc: float, ece: float, gen: dict | None) -> dict:
    m = {"accuracy": acc, "ece": ece}
    if gen is not None:
        m["generation"] = gen
    return {"schema": "egc-eval/1", "checkpoint": ckpt, "kind": kind, "data": "toy", "n_test": 10, "metrics": m,
            "skipped": {} if gen is not None else {"gen": "a classifier does not generate"}}


DOCS = [_doc("runs/a", "egc", 0.9, 0.10, {"fd_toycnn": 3.0, "n": 100}), _doc("runs/b", "classifier", 0.8, 0.02, None)]
LABELS = ["a (egc)", "b (classifier)"]


def test_rows_best_cells_and_missing_cells():
    rows = dict(table_rows(DOCS))
    assert rows["accuracy"] == [("0.9000", True, None), ("0.8000", False, None)]  # larger is better
    assert rows["ece"] == [("0.1000", False, None), ("0.0200", True, None)]  # smaller is better
    assert rows["generation fd_toycnn"][1] == ("-", False, "a classifier does not generate")
    assert rows["generation n"][0] == ("100", False, None)  # counts are never "best"


def test_markdown_matches_html():
    md = markdown_table(LABELS, DOCS)
    lines = md.strip().splitlines()
    assert lines[0] == "| metric | a (egc) | b (classifier) |" and lines[1] == "|---|---|---|"
    assert "| accuracy | **0.9000** | 0.8000 |" in lines and "| ece | 0.1000 | **0.0200** |" in lines
    assert "| generation fd_toycnn | 3.0000 | - |" in lines
    assert len(lines) - 2 == metric_table(LABELS, DOCS).count("<tr>") - 1  # same rows (HTML has a header row)


def test_write_report_picks_markdown_by_suffix(tmp_path):
    specs = []
    for i, d in enumerate(DOCS):
        (tmp_path / f"{i}.json").write_text(json.dumps(d))
        specs.append(str(tmp_path / f"{i}.json"))
    md = write_report(specs, tmp_path / "t.md", title="toy")
    text = md.read_text()
    assert text.startswith("## toy\n\n| metric | a (egc) | b (classifier) |") and "<" not in text
    page = write_report(specs, tmp_path / "t.html", title="toy").read_text()
    assert page.startswith("<!DOCTYPE html>")
