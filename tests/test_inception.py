"""The torchvision-free FID Inception-v3 (egc.eval.inception) and ``egc eval --inception``.

The real weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth) are never downloaded here:
the tests check the state-dict layout against the file's known keys and shapes, round-trip
random weights through a file, and run ``egc eval --inception`` with such random weights.
Inception at 299 x 299 is heavy on CPU, so every batch has 2-4 images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from egc.errors import EgcError
from egc.eval.fid import frechet_distance, frechet_distance_features, gaussian_stats
from egc.eval.inception import (
    FID_KEY,
    KID_KEY,
    WEIGHTS_FILE,
    FIDInceptionV3,
    inception_features,
    inception_metrics,
    load_inception,
    to_inception_input,
)

from .conftest import make_npz
from .test_eval_cmd import _main, _train

# Layout of pytorch-fid's file (torchvision Inception3 with aux_logits=False, num_classes=1008 and
# the FID blocks): 94 conv+BN units of 5 tensors each (conv.weight without bias; bn.weight, bn.bias,
# bn.running_mean, bn.running_var), plus fc.weight and fc.bias. BatchNorm's num_batches_tracked
# counters (one per BN) come on top in a state dict saved by a recent torch.
N_CONV_UNITS = 94
N_TENSORS = N_CONV_UNITS * 5 + 2  # 472
N_PARAMS = 23_850_960  # torchvision's inception_v3 without AuxLogits, 1008 classes
KNOWN_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": [32, 3, 3, 3],
    "Conv2d_1a_3x3.bn.running_mean": [32],
    "Conv2d_4a_3x3.conv.weight": [192, 80, 3, 3],
    "Mixed_5b.branch1x1.conv.weight": [64, 192, 1, 1],
    "Mixed_5b.branch_pool.conv.weight": [32, 192, 1, 1],
    "Mixed_6a.branch3x3.conv.weight": [384, 288, 3, 3],
    "Mixed_6b.branch7x7_2.conv.weight": [128, 128, 1, 7],
    "Mixed_6e.branch7x7dbl_5.conv.weight": [192, 192, 1, 7],
    "Mixed_7a.branch3x3_2.conv.weight": [320, 192, 3, 3],
    "Mixed_7b.branch3x3dbl_1.conv.weight": [448, 1280, 1, 1],
    "Mixed_7c.branch3x3_2b.conv.weight": [384, 384, 3, 1],
    "Mixed_7c.branch_pool.conv.weight": [192, 2048, 1, 1],
    "Mixed_7c.branch_pool.bn.running_var": [192],
    "fc.weight": [1008, 2048],
    "fc.bias": [1008],
}


def _random_net(seed: int) -> FIDInceptionV3:
    """Random weights, including BN statistics (so a load that skipped them would show)."""
    torch.manual_seed(seed)
    net = FIDInceptionV3()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=g))
                mod.bias.copy_(0.1 * torch.randn(n, generator=g))
                mod.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return net.eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, FIDInceptionV3]:
    """(a .pth file of random weights saved with torch.save(state_dict), the net they came from)."""
    net = _random_net(0)
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.save(net.state_dict(), path)
    return path, net


def _images(n: int = 2, c: int = 1, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g) * 2 - 1


# ----------------------------------------------------------------------------- (a) layout
def test_state_dict_matches_the_pytorch_fid_file_layout():
    sd = FIDInceptionV3().state_dict()
    tensors = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert len(tensors) == N_TENSORS
    assert len(sd) - len(tensors) == N_CONV_UNITS
    for k, shape in KNOWN_SHAPES.items():
        assert list(sd[k].shape) == shape, k
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == N_PARAMS
    assert not any("AuxLogits" in k or k.endswith("conv.bias") for k in sd)
    bns = [m for m in FIDInceptionV3().modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == N_CONV_UNITS and all(m.eps == 0.001 for m in bns)


def test_preprocessing_grey_range_and_size():
    x = torch.tensor([-1.0, 0.0, 1.0, 1.02]).reshape(1, 1, 2, 2)
    y = to_inception_input(x)
    assert y.shape == (1, 3, 299, 299) and float(y.min()) >= -1 - 1e-6 and float(y.max()) <= 1 + 1e-6
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])  # grey repeated to RGB
    # corners of an align_corners=False upsampling keep the corner pixels; 0 is quantised to 128/255
    assert float(y[0, 0, 0, 0]) == -1.0 and float(y[0, 0, -1, -1]) == 1.0
    assert float(y[0, 0, 0, -1]) == pytest.approx(128 / 255 * 2 - 1, abs=1e-6)
    with pytest.raises(EgcError, match=r"\[-1, 1\]"):
        inception_features(FIDInceptionV3(), torch.full((1, 3, 8, 8), 255.0))


@pytest.mark.parametrize("n1,n2,d", [(5, 9, 40), (30, 3, 40), (10, 60, 40), (60, 70, 40)])
def test_frechet_from_features_equals_the_covariance_route(n1, n2, d):
    """The low-rank route used for few images (N < 2048 dims) gives the classic value."""
    g = np.random.default_rng(n1 + n2)
    x, y = g.normal(size=(n1, d)), g.normal(size=(n2, d)) * 1.3 + 0.2
    classic = frechet_distance(*gaussian_stats(x), *gaussian_stats(y))
    assert frechet_distance_features(x, y) == pytest.approx(classic, rel=1e-6, abs=1e-9)
    assert frechet_distance_features(x, x) == pytest.approx(0.0, abs=1e-9)


# ----------------------------------------------------------------------------- (b) loading
def test_load_gives_the_saved_networks_features(weights):
    path, ref = weights
    net = load_inception(path)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert net.source["file"] == "random_inception.pth" and len(net.source["sha256"]) == 16
    x = _images(2, 1, 32)
    f = inception_features(net, x)
    assert f.shape == (2, 2048) and f.dtype == torch.float64 and bool(torch.isfinite(f).all())
    with torch.no_grad():
        f_ref = ref(to_inception_input(x)).double()
    torch.testing.assert_close(f, f_ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(f, inception_features(_random_net(1), x))  # the weights made the difference
    assert torch.equal(inception_features(net, x), f)  # deterministic
    m = inception_metrics(net, x, _images(2, 1, 32, seed=1))
    assert set(m) == {FID_KEY, KID_KEY, "kid_std_inception"} and math.isfinite(m[FID_KEY]) and m[FID_KEY] > 0
    # a set against itself is at distance 0; the distance the metric reports is the one of the features
    assert inception_metrics(net, x, x)[FID_KEY] == pytest.approx(0.0, abs=1e-6)
    fy = inception_features(net, _images(2, 1, 32, seed=1))
    assert m[FID_KEY] == pytest.approx(frechet_distance_features(f.numpy(), fy.numpy()), rel=1e-6)


def test_file_without_batchnorm_counters_loads(weights, tmp_path):
    """Older torch versions saved no num_batches_tracked; the counters are optional."""
    path, ref = weights
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    p = tmp_path / "old.pth"
    torch.save(sd, p)
    net = load_inception(p)
    for k, v in sd.items():
        assert torch.equal(net.state_dict()[k], v), k


# ----------------------------------------------------------------------------- (c) bad files
def _small_sd(drop: str | None = None) -> dict[str, torch.Tensor]:
    """Every key of the file, with tiny tensors (small on disk)."""
    return {k: torch.zeros(1) for k in FIDInceptionV3().state_dict() if k != drop}


@pytest.mark.parametrize("case", ["missing_file", "junk", "safetensors", "not_a_dict", "missing_key", "unexpected_key", "wrong_shape", "pickled_module"])
def test_bad_weight_files_give_one_line_errors(case, tmp_path):
    p = tmp_path / f"{case}.pth"
    if case == "junk":
        p.write_bytes(b"\x00not a torch file at all\n" * 10)
    elif case == "safetensors":
        save_file({"w": torch.zeros(3)}, str(p))
    elif case == "not_a_dict":
        torch.save([torch.zeros(2)], p)
    elif case == "missing_key":
        torch.save(_small_sd(drop="Mixed_6c.branch7x7_1.bn.running_var"), p)
    elif case == "unexpected_key":
        torch.save({**_small_sd(), "AuxLogits.fc.weight": torch.zeros(1)}, p)
    elif case == "wrong_shape":
        torch.save(_small_sd(), p)
    elif case == "pickled_module":
        torch.save(torch.nn.Linear(2, 2), p)  # a whole module: weights_only refuses to unpickle it
    needle = {"missing_file": "not found", "junk": "not a torch state dict", "safetensors": "not a torch state dict",
              "not_a_dict": "not a torch state dict", "missing_key": "missing key 'Mixed_6c.branch7x7_1.bn.running_var'",
              "unexpected_key": "unexpected key 'AuxLogits.fc.weight'",
              "wrong_shape": "'Conv2d_1a_3x3.conv.weight' has shape [1], expected [32, 3, 3, 3]",
              "pickled_module": "not a torch state dict"}[case]
    with pytest.raises(EgcError) as ei:
        load_inception(p)
    msg = str(ei.value)
    assert needle in msg and WEIGHTS_FILE in msg and str(p) in msg and "\n" not in msg, msg


# ----------------------------------------------------------------------------- (d) egc eval --inception
@pytest.fixture
def trained16(tmp_path: Path) -> Path:
    """The tiny 16 x 16 EGC run of tests/test_eval_cmd.py."""
    return _train(tmp_path, make_npz(tmp_path / "d16.npz", size=16), "run")


def test_eval_inception_end_to_end(weights, trained16, tmp_path, monkeypatch, capsys):
    from egc.eval.features import FeatureCNN, save_feature_net

    path, _ = weights
    judge = tmp_path / "tinyjudge.safetensors"
    torch.manual_seed(0)
    save_feature_net(FeatureCNN(1, 3, width=4, feat_dim=8).eval(), judge, {"name": "tinyjudge", "image_shape": [1, 16, 16]})
    out = tmp_path / "ev"
    tiny = ["--metrics", "gen", "--n-test", "4", "--n-samples", "4", "--steps", "2", "--batch-size", "4", "--quiet", "--threads", "1"]
    capsys.readouterr()
    assert _main(monkeypatch, ["eval", str(trained16), "--out-dir", str(out), "--judge", str(judge), "--inception", str(path), *tiny]) == 0
    gen = json.loads((out / "eval.json").read_text())["metrics"]["generation"]
    assert math.isfinite(gen[FID_KEY]) and gen[FID_KEY] >= 0 and math.isfinite(gen[KID_KEY])
    assert "fd_tinyjudge" in gen and gen["judge"] == "tinyjudge" and gen["n"] == 4 and gen["n_ref"] == 4
    assert gen["inception_weights"] == load_inception(path).source
    assert not any(k.startswith("fid") and k != FID_KEY for k in gen) and "inception" not in gen

    # without a judge for the data set, --inception alone still gives the generation metrics
    js = tmp_path / "nojudge.json"
    assert _main(monkeypatch, ["eval", str(trained16), "--json", str(js), "--inception", str(path), *tiny]) == 0
    doc = json.loads(js.read_text())
    assert "gen" not in doc["skipped"] and doc["metrics"]["generation"]["judge"] is None
    assert math.isfinite(doc["metrics"]["generation"][FID_KEY]) and "judge_skipped" in doc["metrics"]["generation"]

    html = tmp_path / "r.html"
    assert _main(monkeypatch, ["report", str(out), str(js), "--out", str(html)]) == 0
    page = html.read_text()
    assert "generation fid_inception" in page and "random_inception.pth" in page

    # a junk weights file: one line, exit 2, nothing written
    junk = tmp_path / "junk.pth"
    junk.write_text("hello")
    capsys.readouterr()
    assert _main(monkeypatch, ["eval", str(trained16), "--json", str(tmp_path / "j.json"), "--inception", str(junk), *tiny]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.count("--inception") == 1 and "junk.pth" in err, err
    assert not (tmp_path / "j.json").exists()
