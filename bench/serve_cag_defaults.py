"""The web page's CaG at its defaults, for every EGC head it offers: what share of the images the
generating head and the data set's independent judge put in the requested class (issue 34).

    python bench/serve_cag_defaults.py zoo:fashion-mnist zoo:cifar10 [--n 4] [--classes 0,1,...]

Runs egc.serve.service.Service exactly as a POST /api/cag with only a classifier and a class does
(the page's default steps, size and n), one class after the other, and prints one JSON line per model.
"""

from __future__ import annotations

import argparse
import base64
import io
import json

import numpy as np
import torch
from PIL import Image

from egc.eval.evaluate import DEFAULT_JUDGES
from egc.eval.judge import load_judge
from egc.host import cpu_name
from egc.serve.service import Service


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--classes", default="", help="comma-separated class indices (default all)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    svc = Service(a.models, device="cpu", references=False)
    for spec in a.models:
        cid = f"egc:{spec}"
        c = svc.classifiers[cid]
        data = svc.models[spec].model.config.data.name
        judge = load_judge(DEFAULT_JUDGES[data])
        classes = [int(v) for v in a.classes.split(",") if v] or list(range(len(c.class_names)))
        judged, total, probs, steps = 0, 0, [], None
        for k in classes:
            q = svc.check_cag({"classifier": cid, "class": k})
            steps = q["steps"]
            done = svc.run_cag(q, lambda e: None, lambda: False)
            imgs = np.stack([np.array(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1])))) for u in done["images"]])
            x = torch.from_numpy(imgs).float() / 127.5 - 1
            x = x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)
            with torch.no_grad():
                judged += int((judge.net(x).argmax(1) == k).sum())
            probs.append(done["self_target_prob"])
            total += len(imgs)
        print(json.dumps({"bench": "serve_cag_defaults", "classifier": cid, "steps": steps, "n_per_class": total // len(classes),
                          "classes": len(classes), "self_target_prob": round(float(np.mean(probs)), 4),
                          f"in_class_{judge.name}": round(judged / total, 4), "cpu": cpu_name()}), flush=True)


if __name__ == "__main__":
    main()
