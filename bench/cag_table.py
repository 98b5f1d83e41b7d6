"""The markdown table of bench/cag_scoreboard.sh's rows (BENCHMARKS.md section 6, the CaG scoreboard).

    python bench/cag_table.py runs/cag/board-fm/*.jsonl

One row per (generator, setting): the judge's conditional accuracy and fd / KID / precision / recall in
its features (named in the header: not Inception FID), the generating classifier's own accuracy, the
network-free statistics and images per second.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(paths: list[str]) -> list[dict]:
    out = []
    for p in paths:
        for line in Path(p).read_text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                if r.get("bench") == "cag_scoreboard":
                    out.append(r)
    return out


def fmt(v: object, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def table(rs: list[dict]) -> str:
    if not rs:
        return "(no rows)"
    j = rs[0]["judge"] or "no judge"
    head = (f"| generator | setting | n | in class ({j}) | own acc | fd_{j} | kid_{j} | precision | recall | spectrum dist | "
            "diversity ratio | histogram dist | img/s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rs:
        n = r["naturalness"]
        lines.append("| " + " | ".join([
            r["generator"], r["setting"], str(r["n"]), fmt(r.get(f"cond_acc_{j}")), fmt(r.get("self_acc")), fmt(r.get(f"fd_{j}"), 1),
            fmt(r.get(f"kid_{j}"), 4), fmt(r.get(f"precision_{j}"), 2), fmt(r.get(f"recall_{j}"), 2), fmt(n["spectrum_distance"]),
            fmt(n.get("diversity_ratio")), fmt(n["histogram_distance"]), fmt(r.get("images_per_second"), 2)]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(rows(sys.argv[1:])))
