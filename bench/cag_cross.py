"""Second opinions on bench/cag_scoreboard.py's images: the share each further classifier (any
``egc cag --classifier`` spec; never the one that generated the row) puts in the requested class.

    python bench/cag_cross.py runs/cag/board-fm --classifiers zoo:fashion-mnist,runs/cag/fashion-cnn.safetensors

Reads every NAME.npz in the folder (images uint8 [N, H, W, C], labels [N]) and prints one JSON line per
(file, classifier).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from egc.cag import load_classifier
from egc.host import cpu_name
from egc.eval.samples import load_samples_npz


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--classifiers", required=True)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    specs = [s for s in a.classifiers.split(",") if s]
    clfs = {s: load_classifier(s) for s in specs}
    for f in sorted(a.folder.glob("*.npz")):
        x, y = load_samples_npz(f)
        for spec, clf in clfs.items():
            with torch.no_grad():
                pred = torch.cat([clf(x[i:i + 250]).argmax(1) for i in range(0, len(x), 250)])
            print(json.dumps({"bench": "cag_cross", "file": f.name, "classifier": spec, "n": int(len(y)),
                              "in_class": round(float((pred == y).float().mean()), 4), "cpu": cpu_name()}), flush=True)


if __name__ == "__main__":
    main()
