"""The markdown table of bench/compare_generation.sh's results (BENCHMARKS.md section 7), or, with
--pick MODEL, the sweep setting to judge on more samples.

    python bench/gen_table.py OUT            # one row per model and sweep setting, the chosen one in bold
    python bench/gen_table.py OUT --pick M   # prints SAMPLER:STEPS:ETA:S:W of model M's chosen setting

Files per model M in OUT: M.train.json, M.acc.json, M.sweep.jsonl (the sweep, 500 samples), any
M.extra*.jsonl (more settings at the sweep's sample count, added later: they join the sweep) and any
M.final*.jsonl (settings judged on the final sample count).

Choice rule (stated once, here): for a model that samples classes, the lowest fd among the sweep's
settings whose conditional accuracy is at least 0.9 x the best conditional accuracy of the sweep; for an
unconditional model, the lowest fd. Distances are in the judge's features (fd_fashioncnn for the
default judge), never Inception FID.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from egc.config import load_config


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("benchmark") == "sample"]


def _files(out: Path, m: str, kind: str) -> list[dict]:
    """The sample rows of model ``m``: kind "sweep" = M.sweep.jsonl + M.extra*.jsonl, "final" = M.final*.jsonl,
    files in name order (a later sweep's rows after the first's)."""
    names = [f"{m}.sweep.jsonl", *sorted(p.name for p in out.glob(f"{m}.extra*.jsonl"))] if kind == "sweep" \
        else sorted(p.name for p in out.glob(f"{m}.final*.jsonl"))
    return [r for name in names for r in _rows(out / name)]


def _judge(r: dict) -> str:
    """The judge's name, from the row's Frechet-distance key (fd_<judge>)."""
    return next(k[3:] for k in r if k.startswith("fd_"))


def _key(r: dict, name: str) -> float | None:
    """Metric ``name`` of a row in its judge's features (None if the row has none: an unconditional
    model has no conditional accuracy)."""
    return r.get(f"{name}_{_judge(r)}")


def _interval(r: dict) -> str | None:
    """A row's guidance interval as 'LO-HI', or None when guidance acted at every step (also rows
    written before the interval existed)."""
    lo, hi = r.get("guidance_interval", (0.0, 1.0))
    return None if (lo, hi) == (0.0, 1.0) else f"{lo:g}-{hi:g}"


def setting(r: dict) -> str:
    """The row's bench/sample.py setting, interval always written: without one, sample.py takes the
    model's own default interval (t/T <= 0.6 for an EGC), which is not what an every-step row ran."""
    lo, hi = r.get("guidance_interval", (0.0, 1.0))
    return f"{r['sampler']}:{r['steps']}:{r['eta']:g}:{r['guidance']:g}:{r['cfg']:g}:{lo:g}-{hi:g}"


def pick(rows: list[dict]) -> dict:
    """The chosen sweep row (see the module docstring)."""
    if not rows:
        raise SystemExit("gen_table.py: no sweep rows to choose from")
    accs = [_key(r, "cond_acc") for r in rows]
    if all(a is not None for a in accs):
        best = max(accs)
        rows = [r for r, a in zip(rows, accs) if a >= 0.9 * best]
    return min(rows, key=lambda r: _key(r, "fd"))


def _scale(r: dict) -> str:
    """The classifier guidance s, with its interval of t/T when it does not act at every step."""
    iv = _interval(r)
    return f"{r['guidance']:g}" if iv is None else f"{r['guidance']:g} (t/T {iv})"


def _f(v: float | None, nd: int) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def table(out: Path) -> str:
    lines = ["| model | steps | img/s | test acc | ECE | n | s | w | cond. acc | fd | KID | precision | recall |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    cpu = judge = None
    for train in sorted(out.glob("*.train.json"), key=lambda p: p.stat().st_mtime):
        m = train.name[: -len(".train.json")]
        summ = json.loads(train.read_text() or "{}")
        steps, secs = summ.get("step"), summ.get("elapsed_s")
        batch = load_config(out / m / "config.yaml").train.batch_size  # the run's own config, saved beside it
        ips = steps * batch / secs if steps and secs else None
        acc = ece = None
        accp = out / f"{m}.acc.json"
        if accp.exists():
            met = json.loads(accp.read_text())["metrics"]
            acc, ece = met.get("accuracy", met.get("cluster_purity")), met.get("ece")
        sweep, final = _files(out, m, "sweep"), _files(out, m, "final")
        # bold: the chosen row on the final sample count (the same rule over the final rows), else the sweep's pick
        chosen = pick(final) if final else (pick(sweep) if sweep else None)
        head = f"| {m} | {steps} | {_f(ips, 0)} | {_f(acc, 3)} | {_f(ece, 3)} "
        if not sweep:
            lines.append(head + "| - | - | - | - | - | - | - | - |")
        for i, r in enumerate(sweep + final):
            cpu = cpu or r.get("cpu")
            judge = judge or _judge(r)
            bold = "**" if r is chosen else ""
            lead = head if i == 0 else "| | | | | "
            cond = _key(r, "cond_acc")
            # unconditional samples (no conditional accuracy): the model's stored s and w did not act
            sw, cbold = (f"{_scale(r)} | {r['cfg']:g}", bold) if cond is not None else ("- | -", "")
            lines.append(lead + f"| {r['n']} | {sw} | {cbold}{_f(cond, 2)}{cbold} | "
                         f"{bold}{_f(_key(r, 'fd'), 1)}{bold} | {_f(_key(r, 'kid'), 3)} | {_f(_key(r, 'precision'), 2)} | {_f(_key(r, 'recall'), 2)} |")
    return "\n".join(lines) + f"\n\nCPU: {cpu}. fd, KID, precision, recall in the {judge or 'judge'}'s features (not Inception FID); " \
        "test acc of egc-unsup is cluster purity; bold: the chosen setting on the final sample count; (t/T a-b): guidance only at those steps.\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--pick", metavar="MODEL")
    a = p.parse_args()
    out = Path(a.out)
    if a.pick:
        print(setting(pick(_files(out, a.pick, "sweep"))))
        return
    sys.stdout.write(table(out))


if __name__ == "__main__":
    main()
