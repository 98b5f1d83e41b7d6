"""Where along the noise schedule does a checkpoint's score fail? Per-t eps-MSE (against the true
noise) and noisy-input accuracy on test images, for the EMA weights of an EGC or ddpm checkpoint.
The MSE of the trivial predictor (eps_hat = x_t scaled, the Gaussian-data optimum) is printed
beside it so a number can be read without knowing the schedule. For an EGC with the denoiser prior,
mse_first_order is the MSE of its denoiser channels' first-order eps alone (what the cheap steps of
loss.energy_step_share fit; not what it samples with). For a label-conditioned model (EGC joint or
embedding, conditional ddpm) mse_label is the eps-MSE of the energy given the image's own label
(mse: the null label). Prints one JSON line.

    python bench/eps_by_t.py RUN_OR_CKPT [--n 256] [--ts 1,10,50,100,250,500,750,999]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from egc import EGC
from egc.diffusion.energy import prior_coef
from egc.data import load_data, to_model_range


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--ts", default="1,10,50,100,250,500,750,999")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    m = EGC.load(a.checkpoint)
    test = load_data(m.config.data, "test", shape=m.image_shape)
    x0 = to_model_range(test.images[: a.n])
    y = test.labels[: a.n]
    g = torch.Generator().manual_seed(a.seed)
    rows = {}
    sd2 = float(x0.var())
    for t in (int(s) for s in a.ts.split(",")):
        eps = torch.randn(x0.shape, generator=g)
        tt = torch.full((x0.shape[0],), t)
        xt = m.schedule.add_noise(x0, tt, eps)
        eh = m.eps(xt, t)
        # Gaussian-data optimum (per pixel, zero mean, std of this batch): eps_hat = c_t x_t, the library's prior coefficient
        base = prior_coef(m.schedule.abar(tt[:1]), sd2**0.5).view(1, 1, 1, 1) * xt
        row = {"mse": float((eh - eps).pow(2).mean()), "mse_gaussian_baseline": float((base - eps).pow(2).mean())}
        if m.config.model.conditioning != "none":
            # a label-conditioned model: also the eps of E(x_t | y) for the image's own label (no guidance)
            row["mse_label"] = float((m.eps(xt, t, y) - eps).pow(2).mean())
        if m.config.model.kind == "egc" and m.config.model.energy_prior == "denoiser":
            with torch.no_grad():
                e1, _ = m.energy_model.first_order_eps_and_logits(xt.to(m.device), tt.to(m.device))
            row["mse_first_order"] = float((e1.float().cpu() - eps).pow(2).mean())
        if m.can_classify:
            row["acc"] = float((m.logits(xt, t).argmax(1) == y).float().mean())
        rows[str(t)] = {k: round(v, 4) for k, v in row.items()}
    print(json.dumps({"benchmark": "eps_by_t", "checkpoint": str(a.checkpoint), "n": a.n, "by_t": rows}))


if __name__ == "__main__":
    from egc.errors import EgcError

    try:
        main()
    except EgcError as e:  # a bad checkpoint, data name or flag: one line, not a traceback
        raise SystemExit(f"{sys.argv[0]}: {e}")
