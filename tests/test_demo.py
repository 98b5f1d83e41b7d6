"""`egc demo` end to end on a tiny 28x28 model (the shipped model is exercised by scripts/demo.sh)."""

from __future__ import annotations

import json

from egc.checkpoint import ZOO_DIR
from egc.cli import main

from .conftest import make_npz, tiny_train_argv


def test_demo_writes_pngs_and_summary(tmp_path, capsys):
    data = make_npz(tmp_path / "fm.npz", n=20, size=28, classes=10)
    run = tmp_path / "run"
    assert main(tiny_train_argv(run, data, 1)) == 0
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--checkpoint", str(run), "--quick"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classified"]["images"] == 20 and summary["samples"]["n"] == 20
    assert summary["precision"] in ("bf16", "fp32")  # "auto" resolved, never left as "auto"
    assert (out / "classified.png").stat().st_size > 0 and (out / "samples.png").stat().st_size > 0


def test_shipped_zoo_files_present():
    assert (ZOO_DIR / "fashion-mnist-examples.npz").is_file()
    assert (ZOO_DIR / "fashioncnn.safetensors").is_file()
