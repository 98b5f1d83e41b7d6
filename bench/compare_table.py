"""The issue-33 comparison table (Markdown) from the JSON files bench/compare_kinds.sh writes under OUT.

    python bench/compare_table.py runs/cmp-fm
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(p: Path) -> dict:
    return json.loads(p.read_text()) if p.is_file() else {}


def _f(v, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def _ms(ev: dict, n: int) -> str:
    """Milliseconds per classified image from eval's timing (a model that does not classify has none)."""
    t = (ev.get("wall_time_s") or {}).get("classify")
    return "-" if t is None else f"{1000 * t / n:.2f}"


def main() -> None:
    out = Path(sys.argv[1])
    head = ["model", "steps", "divergences", "clean acc", "ECE", "noisy acc (t=500)", "OOD AUROC (mean)", "PGD L-inf 0.05 / 0.1", "PGD L2 0.5 / 1.5",
            "attack checks", "certified 0.25 / 0.5", "ms / image", "in class", "fd (judge)", "recall", "spectrum dist."]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for run in sorted(p for p in out.iterdir() if p.is_dir()):
        ev, cert, summ = _load(run / "eval.json"), _load(run / "certify.json"), _load(run / "summary.json")
        m = ev.get("metrics", {})
        gen = m.get("generation") or {}
        judge = gen.get("judge") or ""
        ood = m.get("ood_auroc") or {}
        aurocs = [v for v in ood.values() if isinstance(v, (int, float))]
        rob = m.get("robust") if isinstance(m.get("robust"), dict) else {}
        linf, l2, sanity = rob.get("linf") or {}, rob.get("l2") or {}, rob.get("sanity") or {}
        # the attack's own checks (stronger attack, black-box Square, unbounded attack): "ok" or what failed
        checks = ("-" if not sanity or "skipped" in sanity  # skipped: say nothing rather than "ok"
                  else "ok" if sanity.get("ok") else (sanity.get("problems") or "failed"))
        nat = gen.get("naturalness") or {}
        n_cls = ev.get("n_test") or 1
        ca = cert.get("certified_accuracy", {})
        row = [run.name, summ.get("step"), (summ.get("skipped_steps") or 0) + (summ.get("rollbacks") or 0), _f(m.get("accuracy")), _f(m.get("ece")),
               _f((m.get("noisy_accuracy") or {}).get("500")), _f(sum(aurocs) / len(aurocs) if aurocs else None),
               f"{_f(linf.get('0.05'))} / {_f(linf.get('0.1'))}" if linf else "-", f"{_f(l2.get('0.5'))} / {_f(l2.get('1.5'))}" if l2 else "-", checks,
               f"{_f(ca.get('0.25'))} / {_f(ca.get('0.5'))}" if ca else "-", _ms(ev, n_cls),
               _f(gen.get(f"cond_acc_{judge}")), _f(gen.get(f"fd_{judge}"), "{:.1f}") + (f" ({judge})" if judge else ""), _f(gen.get(f"recall_{judge}"), "{:.2f}"),
               _f(nat.get("spectrum_distance"), "{:.2f}")]
        print("| " + " | ".join(str(c) for c in row) + " |")
    # by model, then by network evaluations per image (the budget axis of the diffusion classifier)
    dc = sorted(out.glob("*/dc-*.json"), key=lambda p: (p.parent.name, _load(p).get("evaluations_per_image") or 0))
    if dc:
        print("\n| model | schedule | evaluations / image | diffusion-classifier acc | ms / image | head acc (1 evaluation) |\n|---|---|---|---|---|---|")
        for p in dc:
            d = _load(p)
            print(f"| {p.parent.name} | {d.get('schedule')} | {d.get('evaluations_per_image')} | {_f(d.get('dc_accuracy'))} | {_f(d.get('dc_ms_per_image'), '{:.0f}')} | "
                  f"{_f(d.get('head_accuracy'))} |")


if __name__ == "__main__":
    main()
