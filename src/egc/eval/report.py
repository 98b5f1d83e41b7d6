"""``egc report``: one self-contained HTML page (or a Markdown table) comparing ``egc eval`` results.

Inputs are ``egc-eval/1`` JSON files (or folders holding ``eval.json`` / ``eval/eval.json``). The
page has no scripts and no external files: the metric table, robust-accuracy-vs-eps curves as
inline SVG, reliability diagrams redrawn from the bins stored in the JSON, and sample grids
embedded as base64 PNG.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

from egc.errors import EgcError

from .settings import SCHEMA

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
# Rows where a smaller number is better (for the bold "best" cell); everything else: larger is better.
LOWER_IS_BETTER = ("ece", "fd_", "fid_", "kid_", "wall_time")
NO_BEST = ("sanity", "kid_std")
# Table row prefix -> the metric name that ``skipped`` uses for it.
ROW_GROUP = {"accuracy": "acc", "ece": "ece", "noisy_accuracy": "noisy_acc", "robust": "robust", "sanity": "robust",
             "ood_auroc": "ood", "ood_auroc_msp": "ood", "generation": "gen"}


def find_eval_json(spec: str | Path) -> Path:
    """An eval JSON file, or ``DIR/eval.json`` / ``DIR/eval/eval.json`` for a folder (a run folder)."""
    p = Path(spec)
    if p.is_dir():
        for cand in (p / "eval.json", p / "eval" / "eval.json"):
            if cand.is_file():
                return cand
        raise EgcError(f"no eval.json in {p} or {p / 'eval'} (run egc eval {p} first)")
    if not p.is_file():
        raise EgcError(f"eval result not found: {p}")
    return p


def load_eval_doc(spec: str | Path) -> tuple[dict[str, Any], Path]:
    """(the ``egc-eval/1`` document, the folder it came from); anything else is an EgcError."""
    path = find_eval_json(spec)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EgcError(f"{path} is not a readable JSON file ({type(e).__name__})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise EgcError(f"{path} is not an egc eval result (no \"schema\": \"{SCHEMA}\")")
    return doc, path.parent


def flatten_metrics(doc: dict[str, Any]) -> dict[str, Any]:
    """Ordered ``{row name: value}`` of one document's scalar metrics (table rows)."""
    m = doc.get("metrics", {})
    rows: dict[str, Any] = {}
    for key in ("accuracy", "ece"):
        if key in m:
            rows[key] = m[key]
    for t, v in (m.get("noisy_accuracy") or {}).items():
        rows[f"noisy_accuracy t={t}"] = v
    rb = m.get("robust") or {}
    for norm in ("linf", "l2"):
        for e, v in (rb.get(norm) or {}).items():
            rows[f"robust {norm} eps={e}"] = v
    for key in ("ok", "gradient_masking", "acc_linf_0.5", "unbounded_success", "pgd_acc", "pgd_2x_steps_drop", "square_acc", "pgd_or_square_acc"):
        if key in (rb.get("sanity") or {}):
            rows[f"sanity {key}"] = rb["sanity"][key]
    for group in ("ood_auroc", "ood_auroc_msp"):
        for k, v in (m.get(group) or {}).items():
            rows[f"{group} {k}"] = v
    for k, v in (m.get("generation") or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            rows[f"generation {k}"] = v
    if "total" in doc.get("wall_time_s", {}):
        rows["wall_time_s total"] = doc["wall_time_s"]["total"]
    return rows


def _fmt(v: Any) -> str:
    """Plain text of one cell (the HTML renderer escapes it)."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def _best(row: str, values: list[Any]) -> int | None:
    nums = [(i, v) for i, v in enumerate(values) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if len(nums) < 2 or row.split()[-1] in ("n", "n_ref") or any(row.startswith(p) or f" {p}" in row for p in NO_BEST):
        return None
    lower = any(p in row for p in LOWER_IS_BETTER)
    return (min if lower else max)(nums, key=lambda iv: iv[1])[0]


Cell = tuple[str, bool, str | None]  # (text, best of its row, why it is missing or None)


def table_rows(docs: list[dict[str, Any]]) -> list[tuple[str, list[Cell]]]:
    """The comparison table as data: one ``(metric, cells)`` per row, one cell per model (plain text).

    Shared by the HTML page and the Markdown table, so both always show the same rows and best cells."""
    flat = [flatten_metrics(d) for d in docs]
    names: list[str] = []
    for f in flat:
        names += [r for r in f if r not in names]
    rows: list[tuple[str, list[Cell]]] = [
        ("kind", [(str(d.get("kind")), False, None) for d in docs]),
        ("data (n_test)", [(f"{d.get('data')} ({d.get('n_test')})", False, None) for d in docs]),
    ]
    for r in names:
        vals = [f.get(r) for f in flat]
        best = _best(r, vals)
        cells: list[Cell] = []
        for i, (v, d) in enumerate(zip(vals, docs)):
            if r not in flat[i]:
                cells.append(("-", False, str((d.get("skipped") or {}).get(ROW_GROUP.get(r.split()[0], ""), "not measured"))))
            else:
                cells.append((_fmt(v), i == best, None))
        rows.append((r, cells))
    return rows


def metric_table(labels: list[str], docs: list[dict[str, Any]]) -> str:
    """HTML table: one row per metric, one column per model; the best value of a row in bold."""
    head = "".join(f"<th>{html.escape(lb)}</th>" for lb in labels)
    body = []
    for r, cells in table_rows(docs):
        tds = []
        for text, best, why in cells:
            if why is not None:
                tds.append(f"<td class='na' title='{html.escape(why, quote=True)}'>-</td>")
            else:
                tds.append(f"<td><b>{html.escape(text)}</b></td>" if best else f"<td>{html.escape(text)}</td>")
        body.append(f"<tr><td>{html.escape(r)}</td>{''.join(tds)}</tr>")
    return f"<table class='metrics'><thead><tr><th>metric</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def markdown_table(labels: list[str], docs: list[dict[str, Any]]) -> str:
    """The same table as GitHub Markdown (best value of a row in bold, missing cells as "-")."""
    def esc(t: str) -> str:
        return t.replace("|", "\\|")

    lines = ["| metric | " + " | ".join(esc(lb) for lb in labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for r, cells in table_rows(docs):
        lines.append(f"| {esc(r)} | " + " | ".join(f"**{esc(t)}**" if b else esc(t) for t, b, _ in cells) + " |")
    return "\n".join(lines) + "\n"


def svg_curve(series: list[tuple[str, list[tuple[float, float]]]], title: str, xlabel: str, ylabel: str = "robust accuracy",
              width: int = 420, height: int = 280) -> str:
    """An inline SVG line chart: ``series`` = [(label, [(x, y), ...])] with y in [0, 1]."""
    left, right, top, bottom = 50, width - 120, 28, height - 40
    xs = [x for _, pts in series for x, _ in pts]
    xmax = max(xs) if xs else 1.0
    xmax = xmax if xmax > 0 else 1.0

    def px(x: float, y: float) -> tuple[float, float]:
        return left + x / xmax * (right - left), bottom - y * (bottom - top)

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' viewBox='0 0 {width} {height}' font-family='sans-serif' font-size='11'>",
             f"<text x='{left}' y='16' font-size='13'>{html.escape(title)}</text>"]
    for i in range(6):
        gy = i / 5
        _, y = px(0, gy)
        parts.append(f"<line x1='{left}' y1='{y:.1f}' x2='{right}' y2='{y:.1f}' stroke='#ddd'/>"
                     f"<text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end'>{gy:.1f}</text>")
        gx = xmax * i / 5
        x, _ = px(gx, 0)
        parts.append(f"<line x1='{x:.1f}' y1='{top}' x2='{x:.1f}' y2='{bottom}' stroke='#eee'/>"
                     f"<text x='{x:.1f}' y='{bottom + 14}' text-anchor='middle'>{gx:.3g}</text>")
    parts.append(f"<rect x='{left}' y='{top}' width='{right - left}' height='{bottom - top}' fill='none' stroke='#333'/>")
    parts.append(f"<text x='{(left + right) / 2:.0f}' y='{height - 8}' text-anchor='middle'>{html.escape(xlabel)}</text>")
    parts.append(f"<text x='12' y='{(top + bottom) / 2:.0f}' transform='rotate(-90 12 {(top + bottom) / 2:.0f})' text-anchor='middle'>{html.escape(ylabel)}</text>")
    for i, (label, pts) in enumerate(series):
        col = PALETTE[i % len(PALETTE)]
        pts = sorted((x, y) for x, y in pts if y is not None)
        coords = " ".join(f"{px(x, y)[0]:.1f},{px(x, y)[1]:.1f}" for x, y in pts)
        if coords:
            parts.append(f"<polyline points='{coords}' fill='none' stroke='{col}' stroke-width='2'/>")
            parts += [f"<circle cx='{px(x, y)[0]:.1f}' cy='{px(x, y)[1]:.1f}' r='3' fill='{col}'><title>{html.escape(label)}: eps {x:g}, {y:.3f}</title></circle>" for x, y in pts]
        ly = top + 14 * i + 8
        parts.append(f"<line x1='{right + 8}' y1='{ly}' x2='{right + 24}' y2='{ly}' stroke='{col}' stroke-width='2'/>"
                     f"<text x='{right + 28}' y='{ly + 4}'>{html.escape(label[:16])}</text>")
    parts.append("</svg>")
    return "".join(parts)


def robust_curves(labels: list[str], docs: list[dict[str, Any]]) -> str:
    """One SVG per norm with a line per model; clean accuracy is plotted at eps = 0."""
    out = []
    for norm, xlabel in (("linf", "eps (L-inf, pixel scale [0, 1])"), ("l2", "eps (L2, pixel scale [0, 1])")):
        series = []
        for lb, d in zip(labels, docs):
            curve = ((d.get("metrics") or {}).get("robust") or {}).get(norm)
            if not curve:
                continue
            pts = [(float(e), a) for e, a in curve.items()]
            acc = (d.get("metrics") or {}).get("accuracy")
            if acc is not None:
                pts.append((0.0, acc))
            series.append((lb, pts))
        if series:
            out.append(svg_curve(series, f"PGD robust accuracy, {norm}", xlabel))
    return "".join(out)


def _png_b64(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _find_artifact(path: str, base: Path) -> Path | None:
    p = Path(path)
    for cand in (p, base / p, base / p.name):
        if cand.is_file():
            return cand
    return None


def figures(labels: list[str], docs: list[dict[str, Any]], bases: list[Path]) -> str:
    """Reliability diagrams (redrawn from the JSON bins) and sample grids (embedded PNG files)."""
    from .calibration import reliability_diagram_png

    rel, grids = [], []
    for lb, d, base in zip(labels, docs, bases):
        bins = (d.get("metrics") or {}).get("reliability")
        if bins:
            safe = {k: [float("nan") if v is None else v for v in bins[k]] for k in ("edges", "confidence", "accuracy", "count")}
            rel.append(f"<figure><img src='{_png_b64(reliability_diagram_png(safe, lb[:30]))}' alt='reliability {html.escape(lb)}'>"
                       f"<figcaption>{html.escape(lb)}</figcaption></figure>")
        path = (d.get("artifacts") or {}).get("samples_png")
        found = _find_artifact(path, base) if path else None
        if found is not None:
            gen = (d.get("metrics") or {}).get("generation") or {}
            cap = f"{lb}: {gen.get('n', '?')} samples, guidance {gen.get('guidance', '?')}, {d.get('settings', {}).get('sampler', '')} {d.get('settings', {}).get('steps', '')} steps"
            grids.append(f"<figure><img class='grid' src='{_png_b64(found.read_bytes())}' alt='samples {html.escape(lb)}'>"
                         f"<figcaption>{html.escape(cap)}</figcaption></figure>")
    out = ""
    if rel:
        out += "<h2>Reliability diagrams</h2><div class='row'>" + "".join(rel) + "</div>"
    if grids:
        out += "<h2>Samples (one row per class)</h2><div class='row'>" + "".join(grids) + "</div>"
    return out


def _labels(docs: list[dict[str, Any]]) -> list[str]:
    out = []
    for i, d in enumerate(docs):
        ck = str(d.get("checkpoint", f"model {i + 1}")).rstrip("/")
        name = ck if ck.startswith("zoo:") else (Path(ck).name or ck)
        lb = f"{name} ({d.get('kind', '?')})"
        out.append(lb if lb not in out else f"{lb} #{i + 1}")
    return out


def build_report(docs: list[dict[str, Any]], bases: list[Path], title: str = "egc evaluation") -> str:
    """The HTML page for ``docs`` (``egc-eval/1`` documents); ``bases`` are their folders (for PNG files)."""
    labels = _labels(docs)
    notes = []
    for lb, d in zip(labels, docs):
        for k, why in (d.get("skipped") or {}).items():
            notes.append(f"<li>{html.escape(lb)}: <b>{html.escape(k)}</b> skipped: {html.escape(str(why))}</li>")
        san = ((d.get("metrics") or {}).get("robust") or {}).get("sanity") or {}
        if san.get("problems"):
            notes.append(f"<li>{html.escape(lb)}: attack sanity problems: {html.escape(san['problems'])}</li>")
        for k, why in ((d.get("metrics") or {}).get("ood_notes") or {}).items():
            notes.append(f"<li>{html.escape(lb)}: OOD set {html.escape(k)} {html.escape(str(why))}</li>")
        iw = ((d.get("metrics") or {}).get("generation") or {}).get("inception_weights")
        if isinstance(iw, dict):
            notes.append(f"<li>{html.escape(lb)}: fid_inception / kid_inception with Inception weights "
                         f"{html.escape(str(iw.get('file')))} (sha256 {html.escape(str(iw.get('sha256')))}...)</li>")
    style = ("body{font-family:sans-serif;margin:24px;color:#222}table.metrics{border-collapse:collapse}"
             "table.metrics td,table.metrics th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "table.metrics td:first-child{text-align:left}td.na{color:#999}.row{display:flex;flex-wrap:wrap;gap:16px}"
             "figure{margin:0}img.grid{image-rendering:pixelated;max-width:560px}figcaption{font-size:12px;color:#555}")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             "<p>Metric names carry their feature network (fd_fashioncnn is a Frechet distance in the features of the "
             "independent Fashion-MNIST CNN, not Inception FID; fid_inception is the standard FID, with the Inception-v3 "
             "weights named in the notes). Robust accuracy: PGD on the full prediction path, pixel "
             "scale [0, 1]. OOD AUROC: energy score (lower = in-distribution); _msp rows use the max softmax probability.</p>",
             "<h2>Metrics</h2>", metric_table(labels, docs)]
    curves = robust_curves(labels, docs)
    if curves:
        parts += ["<h2>Robust accuracy vs eps</h2><div class='row'>", curves, "</div>"]
    parts.append(figures(labels, docs, bases))
    if notes:
        parts += ["<h2>Notes</h2><ul>", *notes, "</ul>"]
    parts.append("</body></html>")
    return "".join(parts)


def write_report(specs: list[str], out: str | Path, title: str = "egc evaluation") -> Path:
    """Read every eval result in ``specs`` and write the report to ``out``: an HTML page, or for a
    ``.md`` file the metric table alone as Markdown (for a README or a paper draft)."""
    from egc.imageio import atomic_write_bytes, check_output_file

    out = check_output_file(out)
    loaded = [load_eval_doc(s) for s in specs]
    docs = [d for d, _ in loaded]
    if Path(out).suffix.lower() == ".md":
        page = f"## {title}\n\n" + markdown_table(_labels(docs), docs)
    else:
        page = build_report(docs, [b for _, b in loaded], title)
    atomic_write_bytes(out, page.encode("utf-8"))
    return out
