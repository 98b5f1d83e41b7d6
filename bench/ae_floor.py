"""How much does a latent model's autoencoder cost its samples? The floor under any latent sample.

N class-balanced *training* images, and the same images after encoding and decoding, are each judged
against the test set exactly as samples are (bench/sample.py: the data set's shipped judge, so the
Frechet distance is fd_<judge>, never Inception FID). The real images' row is the finite-sample floor
of the metric at this N; the reconstructions' row is the best a perfect latent model could reach with
this autoencoder. Also the pixel error of the reconstructions (PSNR in [-1, 1] units) and the judge's
accuracy on both.

    python bench/ae_floor.py AE [--n 1000] [--judge zoo:cifarcnn]     (AE: an autoencoder run or file)
prints one JSON line per row.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from egc.autoencoder import load_autoencoder
from egc.data import load_dataset, to_model_range
from egc.eval.evaluate import DEFAULT_JUDGES
from egc.eval.judge import judge_samples, load_judge


def balanced_rows(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of n rows, as equal a share of each class as n allows, in a seeded random order."""
    g = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    per = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
    picks = []
    for c, k in zip(classes.tolist(), per):
        rows = (labels == c).nonzero().flatten()
        picks.append(rows[torch.randperm(len(rows), generator=g)[:k]])
    return torch.cat(picks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("autoencoder")
    p.add_argument("--data", default="cifar10")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--judge", default=None, help="zoo:NAME or file; default: the data set's shipped judge")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    judge_name = a.judge or DEFAULT_JUDGES.get(a.data)
    if judge_name is None:
        raise SystemExit(f"ae_floor.py: no shipped judge for data '{a.data}': give --judge")
    ae = load_autoencoder(a.autoencoder)
    judge = load_judge(judge_name)
    train = load_dataset(a.data, "train")
    test = to_model_range(load_dataset(a.data, "test").images)
    labels = torch.as_tensor(train.labels)
    rows = balanced_rows(labels, a.n, a.seed)
    x, y = to_model_range(train.images[rows]), labels[rows]
    with torch.no_grad():
        rec = torch.cat([ae.reconstruct(x[i:i + 250]) for i in range(0, len(x), 250)]).clamp(-1, 1)
    mse = float((rec - x).pow(2).mean())
    for what, imgs in (("real", x), ("reconstructed", rec)):
        row = {"benchmark": "ae_floor", "images": what, "autoencoder": a.autoencoder, "data": a.data, "n": a.n,
               **judge_samples(judge, imgs, y, test, kid_subsets=50, kid_subset_size=min(a.n, 500))}
        if what == "reconstructed":
            row.update(mse_minus1_1=mse, psnr_db=float(10 * torch.log10(torch.tensor(4.0 / mse))))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    from egc.errors import EgcError

    try:
        main()
    except EgcError as e:  # a bad autoencoder file or data name: one line
        raise SystemExit(f"{sys.argv[0]}: {e}")
