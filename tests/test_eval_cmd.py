"""egc eval / egc report: calibration, attacks, OOD AUROC, and the two commands end to end on tiny runs.

(Frechet distance / KID / precision-recall are covered by tests/test_metrics.py.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import egc.cli as egc_cli
from egc.eval.attacks import pgd, project, robust_accuracy_curve, square_linf
from egc.eval.calibration import expected_calibration_error, reliability_bins, reliability_diagram_png
from egc.eval.cli import add_eval_parsers
from egc.eval.ood import auroc, convert_images

from .conftest import make_npz, tiny_train_argv


# ----------------------------------------------------------------------------- calibration
def _probs(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, k, generator=g) * 2, dim=1)


def test_ece_calibrated_toy_is_near_zero_and_overconfident_is_large():
    g = torch.Generator().manual_seed(1)
    p = _probs(40000, 4, 0)
    y = torch.multinomial(p, 1, generator=g)[:, 0]  # labels drawn from the predicted probabilities
    assert expected_calibration_error(p, y) < 0.015
    sharp = torch.softmax(torch.log(p) * 4, dim=1)  # same ranking, far more confident than the truth
    assert expected_calibration_error(sharp, y) > 0.15


def test_ece_exact_small_cases():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert expected_calibration_error(p, torch.tensor([0, 1])) == pytest.approx(0.5)
    assert expected_calibration_error(p, torch.tensor([0, 0])) == pytest.approx(0.0)
    bins = reliability_bins(torch.tensor([[0.6, 0.4], [0.2, 0.8]]), torch.tensor([1, 1]))
    assert sum(bins["count"]) == 2 and len(bins["edges"]) == 16
    assert reliability_diagram_png(bins, "t")[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- attacks
class Linear(torch.nn.Module):
    """Binary logits [0, w.x + b] on images [B, 1, 4, 5]: class 1 iff w.x + b > 0."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(20, generator=g)
        self.b = -float(self.w.sum()) * 0.5  # the boundary passes through the mid-grey image

    def z(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w + self.b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.z(x)
        return torch.stack([torch.zeros_like(z), z], dim=1)


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.1)])
def test_pgd_on_linear_model_reaches_the_analytic_accuracy(norm, eps):
    net = Linear()
    g = torch.Generator().manual_seed(3)
    x = 0.3 + 0.4 * torch.rand(400, 1, 4, 5, generator=g)  # interior: the [0, 1] box never binds
    y = (net.z(x) > 0).long()
    thr = eps * float(net.w.abs().sum() if norm == "linf" else net.w.norm())
    margin = net.z(x).abs()
    _, fooled = pgd(net, x, y, norm, eps, steps=20, restarts=1)
    assert not fooled[margin > thr].any()  # nothing beyond the ball's reach flips
    assert fooled[margin < 0.95 * thr].all()  # everything well within it does
    acc = robust_accuracy_curve(net, x, y, norm, [eps], steps=20)[eps]
    assert acc == pytest.approx(float((margin >= thr).double().mean()), abs=0.02)
    if norm == "linf":  # the gradient-free attack can never beat the optimum either
        _, sq = square_linf(net, x, y, eps, queries=100)
        assert not sq[margin > thr].any() and sq.any()


class Recorder(torch.nn.Module):
    """A small conv net that records every input the attack feeds it (class 0 always wins: nothing
    is ever broken, so every example runs every step against the constraints)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(4 * 36, 3))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.net(x) * 10 + torch.tensor([1000.0, 0.0, 0.0])


def test_sanity_thresholds_count_one_example_in_100_as_exactly_one_point():
    from egc.eval.attacks import _more_than_a_point

    one = float(torch.tensor(0.09)) - float(torch.tensor(0.08))  # float32 shares: 0.0100000054...
    assert one > 0.01 and not _more_than_a_point(one)
    assert _more_than_a_point(0.02) and not _more_than_a_point(0.0)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.7)])
def test_pgd_never_leaves_the_ball_or_the_box(norm, eps):
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(1, 1, 6, 6, generator=g) > 0.5).float()  # pixels at 0 and 1: the box binds
    x0[0, 0, 0, :3] = 0.5
    x = x0.expand(16, -1, -1, -1).clone()  # one image 16 times (16 random starts): every input must be near x0
    y = torch.zeros(16, dtype=torch.long)
    model = Recorder()
    x_adv, _ = pgd(model, x, y, norm, eps, steps=10, restarts=2, step_size=eps)  # large steps push past the ball
    seen = torch.cat(model.seen + [x_adv])
    assert seen.shape[0] == 16 * (1 + 2 * 11) + 16
    assert seen.min() >= 0 and seen.max() <= 1
    d = (seen - x0).flatten(1)
    size = d.abs().max(dim=1).values if norm == "linf" else d.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    # projection alone: far-away points come back to the ball's surface and into [0, 1]
    p = project(x0 + 5 * torch.randn(8, 1, 6, 6, generator=g), x0.expand(8, -1, -1, -1), norm, eps)
    assert p.min() >= 0 and p.max() <= 1


# ----------------------------------------------------------------------------- OOD
def test_auroc_separable_identical_and_ties():
    a, b = torch.arange(10.0), torch.arange(10.0) + 100
    assert auroc(a, b) == 1.0 and auroc(b, a) == 0.0
    g = torch.Generator().manual_seed(0)
    assert auroc(torch.randn(5000, generator=g), torch.randn(5000, generator=g)) == pytest.approx(0.5, abs=0.03)
    assert auroc(torch.ones(7), torch.ones(3)) == 0.5
    rng = np.random.default_rng(0)
    s_in, s_out = rng.integers(0, 5, 40), rng.integers(1, 6, 30)  # many ties: compare with all pairs
    brute = np.mean([(o > i) + 0.5 * (o == i) for i in s_in for o in s_out])
    assert auroc(s_in, s_out) == pytest.approx(brute)


def test_convert_images_grey_and_size():
    rgb = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    out = convert_images(rgb, 1, 28)
    assert out.shape == (2, 1, 28, 28) and out.min() >= -1 and out.max() <= 1
    flat = torch.full((1, 32, 32, 3), 0, dtype=torch.uint8)
    flat[..., 0] = 255  # pure red: grey by luma is 0.299 * 255 = 76, i.e. 76 / 127.5 - 1 = -0.40 on the model's scale
    assert convert_images(flat, 1, 28).mean().item() == pytest.approx(76 / 127.5 - 1, abs=0.02)
    assert convert_images(torch.zeros(1, 8, 8, 1, dtype=torch.uint8), 3, 8).shape == (1, 3, 8, 8)


# ----------------------------------------------------------------------------- the commands
def _main(monkeypatch, argv: list[str]) -> int:
    """egc.cli.main with eval/report wired in (no-op once egc.cli adds them itself)."""
    orig = egc_cli.build_parser

    def build():
        p = orig()
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        if "eval" not in sub.choices:
            add_eval_parsers(sub)
        return p

    monkeypatch.setattr(egc_cli, "build_parser", build)
    return egc_cli.main(argv)


def _train(tmp_path: Path, npz: Path, name: str, *extra: str) -> Path:
    run = tmp_path / name
    assert egc_cli.main(tiny_train_argv(run, npz, 3, *extra)) == 0
    return run


@pytest.fixture
def trained(tmp_path: Path) -> Path:
    """A tiny EGC run on 16 x 16 images (the judge network needs at least 16 x 16)."""
    return _train(tmp_path, make_npz(tmp_path / "d16.npz", size=16), "run")


FAST = ["--n-test", "24", "--n-robust", "12", "--pgd-steps", "2", "--restarts", "1", "--square-queries", "5", "--sanity-n", "6",
        "--noise-t", "0,500", "--ood-sets", "uniform,gaussian", "--n-samples", "6", "--steps", "2", "--quiet", "--threads", "1"]


def _check_accuracy_and_ece_by_hand(tmp_path: Path, run: Path, monkeypatch, capsys) -> None:
    """egc eval's accuracy and ECE equal the ones computed here from the model's own logits.

    Three training steps leave the classifier predicting one class for every image (accuracy 1/3
    whatever the image-label pairing), so the check runs on a copy of the checkpoint whose output
    layer is replaced by seeded random weights: predictions then differ between images. The whole
    test split is evaluated (--n-test 48 of 48), so which subset the command draws does not matter."""
    from egc.checkpoint import load_checkpoint, save_checkpoint
    from egc.data import load_dataset, to_model_range
    from egc.model import EGC

    ck = load_checkpoint(run)
    w = torch.randn(ck.tensors["model.out.weight"].shape, generator=torch.Generator().manual_seed(0)) * 0.3
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, v in ck.tensors.items():
        prefix, name = key.split(".", 1)
        if prefix in ("model", "ema") and name.endswith("conv2.weight"):  # zero-init residual branches: open them too
            v = torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) * 0.3
        groups.setdefault(prefix, {})[name] = w.clone() if name == "out.weight" and prefix in ("model", "ema") else v
    varied = save_checkpoint(tmp_path / "varied.safetensors", ck.config, ck.step, groups, ck.kind, ck.meta)
    js = tmp_path / "varied.json"
    capsys.readouterr()
    assert _main(monkeypatch, ["eval", str(varied), "--metrics", "acc,ece", "--n-test", "48", "--json", str(js), "--quiet", "--threads", "1"]) == 0
    doc = json.loads(js.read_text())
    assert doc["n_test"] == doc["n_test_full"] == 48
    m = doc["metrics"]

    model = EGC.load(str(varied))
    ds = load_dataset(model.config.data.name, "test")
    with torch.no_grad():
        logits = model.logits(to_model_range(ds.images)).double()
    y, pred = ds.labels, logits.argmax(1)
    assert pred.unique().numel() > 1  # not a constant predictor: the pairing of images and labels matters
    assert m["accuracy"] == pytest.approx(float((pred == y).double().mean()), abs=1e-6)
    conf = torch.softmax(logits, 1).max(1).values
    bin_of = (conf * 15).ceil().long().clamp(1, 15)  # bin b holds confidences in ((b - 1) / 15, b / 15]
    hits = (pred == y).double()
    ece = sum(abs(float(hits[bin_of == b].mean()) - float(conf[bin_of == b].mean())) * int((bin_of == b).sum()) / len(y)
              for b in range(1, 16) if (bin_of == b).any())
    assert m["ece"] == pytest.approx(ece, abs=1e-5)
    assert m["reliability"]["count"] == [int((bin_of == b).sum()) for b in range(1, 16)]


def test_eval_then_report(tmp_path, trained, monkeypatch, capsys):
    from egc.eval.features import FeatureCNN, save_feature_net

    judge = tmp_path / "tinyjudge.safetensors"
    torch.manual_seed(0)
    save_feature_net(FeatureCNN(1, 3, width=4, feat_dim=8).eval(), judge, {"name": "tinyjudge", "image_shape": [1, 16, 16]})
    out = tmp_path / "ev"
    capsys.readouterr()
    assert _main(monkeypatch, ["eval", str(trained), "--out-dir", str(out), "--judge", str(judge), *FAST]) == 0
    doc = json.loads((out / "eval.json").read_text())
    assert doc == json.loads(capsys.readouterr().out)
    assert doc["schema"] == "egc-eval/1" and doc["kind"] == "egc" and doc["n_test"] == 24
    m = doc["metrics"]
    _check_accuracy_and_ece_by_hand(tmp_path, trained, monkeypatch, capsys)
    assert set(m["noisy_accuracy"]) == {"0", "500"}
    assert set(m["robust"]["linf"]) == {"0.05", "0.1", "0.2"} and set(m["robust"]["l2"]) == {"0.5", "1.5", "3"}
    assert m["robust"]["sanity"]["attack_path_max_abs_diff"] < 1e-4 and "gradient_masking" in m["robust"]["sanity"]
    assert set(m["ood_auroc"]) == {"uniform_noise", "gaussian_noise"}
    gen = m["generation"]
    assert {"fd_tinyjudge", "kid_tinyjudge", "precision_tinyjudge", "recall_tinyjudge", "cond_acc_tinyjudge"} <= set(gen)
    assert not any(k.startswith("fid") for k in gen)
    assert gen["guidance_interval"] == [0.0, 0.6]  # the model's own: an EGC's default interval
    assert Path(doc["artifacts"]["samples_png"]).is_file() and Path(doc["artifacts"]["reliability_png"]).is_file()
    assert doc["skipped"] == {} and doc["wall_time_s"]["total"] > 0

    # a classifier baseline: no generation, energy = -logsumexp(logits) for OOD
    clf = _train(tmp_path, make_npz(tmp_path / "d16.npz", size=16), "clf", "--model", "classifier")
    js = tmp_path / "clf.json"
    assert _main(monkeypatch, ["eval", str(clf), "--metrics", "acc,ece,ood,gen", "--json", str(js), *FAST]) == 0
    cdoc = json.loads(js.read_text())
    assert cdoc["kind"] == "classifier" and "does not generate" in cdoc["skipped"]["gen"] and "uniform_noise" in cdoc["metrics"]["ood_auroc"]

    html = tmp_path / "r.html"
    capsys.readouterr()
    assert _main(monkeypatch, ["report", str(out), str(js), "--out", str(html)]) == 0
    page = html.read_text()
    assert "<table class='metrics'>" in page and "accuracy" in page and "fd_tinyjudge" in page
    assert "<svg" in page and "data:image/png;base64," in page and "<script" not in page
    assert "does not generate" in page


@pytest.mark.parametrize("case", ["unknown_metric", "missing_ckpt", "wrong_data", "inception", "bad_eps", "bad_t", "bad_interval",
                                  "report_not_eval"])
def test_bad_input_is_one_line(case, tmp_path, trained, monkeypatch, capsys):
    args = {
        "unknown_metric": (["eval", str(trained), "--metrics", "acc,fid"], "unknown metric 'fid'"),
        "missing_ckpt": (["eval", str(tmp_path / "nope.safetensors")], "nope.safetensors"),
        # (another image size is not an error any more: the model's preprocessing resizes it)
        "wrong_data": (["eval", str(trained), "--data", f"npz:{make_npz(tmp_path / 'd5.npz', size=16, classes=5)}"], "has 5 classes but the model has 3"),
        "inception": (["eval", str(trained), "--inception", "pt_inception.pth"], "Inception weights file not found"),
        "bad_eps": (["eval", str(trained), "--eps-linf", "0.1,x"], "--eps-linf"),
        "bad_t": (["eval", str(trained), "--noise-t", "5000", "--metrics", "noisy_acc"], "--noise-t"),
        "bad_interval": (["eval", str(trained), "--metrics", "gen", "--guidance-interval", "0.8,0.2"], "--guidance-interval"),
        "report_not_eval": (["report", str(tmp_path / "d8.json")], "not found"),
    }[case]
    argv, needle = args
    if case == "report_not_eval":
        (tmp_path / "d8.json").write_text("{}")
        needle = "not an egc eval result"
    capsys.readouterr()
    assert _main(monkeypatch, argv + (["--out-dir", str(tmp_path / "o")] if argv[0] == "eval" else ["--out", str(tmp_path / "r.html")])) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and needle in err, err
