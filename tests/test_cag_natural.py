"""Network-free naturalness statistics, egc eval --samples, and CaG's noise annealing, feature statistics
and data-seeded start (issue 34), on tiny data made here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from egc.cag import CaGConfig, generate, load_classifier, logits_and_features, wrap_module
from egc.cag.adapters import noisy_logits_and_features
from egc.cag.generate import noise_at
from egc.cag.stats import PixelPrior, class_feature_stats
from egc.errors import EgcError
from egc.eval.naturalness import diversity_ratio, histogram_distance, naturalness, radial_power_spectrum, spectrum_distance

from .conftest import make_npz


def smooth_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Blurry random images [n, 1, size, size] in [0, 1]: low-frequency content only."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


# ---- naturalness ------------------------------------------------------------------------------
def test_power_spectrum_of_a_known_image():
    # a pure cosine of frequency 3 along x: all power (apart from DC) sits at radius 3
    x = 0.5 + 0.25 * torch.cos(2 * torch.pi * 3 * torch.arange(16) / 16).view(1, 1, 1, 16).expand(1, 1, 16, 16)
    spec = radial_power_spectrum(x)
    assert spec.shape == (8,)
    assert int(spec.argmax()) == 2 and float(spec[2]) > float(spec[0]) + 6  # radius 3 is index 2 (DC excluded)


def test_spectrum_distance_separates_noise_from_smooth_images():
    a, b = smooth_images(64, seed=0), smooth_images(64, seed=1)
    noise = torch.rand(64, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    same = spectrum_distance(a, b)
    assert same < 0.1
    assert spectrum_distance(noise, a) > 5 * max(same, 0.05)
    assert spectrum_distance(a, a) == 0.0


def test_diversity_ratio_sees_copies_and_histogram_sees_brightness():
    real = smooth_images(40, seed=3)
    y = torch.arange(40) % 2
    assert diversity_ratio(smooth_images(40, seed=4), y, real, y)[0] == pytest.approx(1.0, abs=0.25)
    copies = real[:1].expand(40, -1, -1, -1).clone()  # one image per class, repeated
    assert diversity_ratio(copies, y, real, y)[0] == 0.0
    assert histogram_distance(real, real) == 0.0
    assert histogram_distance((real + 0.3).clamp(0, 1), real) > 0.2
    out = naturalness(copies, y, real, y)
    assert out["diversity_ratio"] == 0.0 and set(out) >= {"spectrum_distance", "histogram_distance", "diversity_ratio_min_class"}
    with pytest.raises(EgcError, match=r"in \[0, 1\]"):
        naturalness(real * 2 - 1, y, real, y)


# ---- egc eval --samples -----------------------------------------------------------------------
def _write_samples(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, images=images, labels=labels)
    return path


def test_eval_samples_scores_any_image_set(tmp_path, capsys, monkeypatch):
    from egc.cli import main
    from egc.eval.features import FeatureCNN, save_feature_net

    data = make_npz(tmp_path / "d.npz", n=60, size=16, classes=3)
    judge = FeatureCNN(1, 3, width=4, feat_dim=8)
    save_feature_net(judge.eval(), tmp_path / "j.safetensors", {"name": "tinyjudge", "image_shape": [1, 16, 16]})
    with np.load(data) as z:
        real, y = z["images"], z["labels"]
    # the real images themselves score as natural; uniform noise does not
    own = _write_samples(tmp_path / "own.npz", real, y)
    noise = _write_samples(tmp_path / "noise.npz", np.random.default_rng(0).integers(0, 256, real.shape).astype(np.uint8), y)
    docs = []
    for f in (own, noise):
        assert main(["eval", "--samples", str(f), "--data", f"npz:{data}", "--judge", str(tmp_path / "j.safetensors")]) == 0
        docs.append(json.loads(capsys.readouterr().out))
    assert docs[0]["naturalness"]["spectrum_distance"] == pytest.approx(0.0, abs=1e-9)
    assert docs[0]["naturalness"]["diversity_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert docs[1]["naturalness"]["spectrum_distance"] > 0.3
    assert "fd_tinyjudge" in docs[0] and "cond_acc_tinyjudge" in docs[0] and "not Inception FID" in docs[0]["judge_note"]
    # bad input: one line each, naming the problem
    bad = _write_samples(tmp_path / "bad.npz", real[:, :8], y)
    for argv, msg in ((["eval", "--samples", str(bad), "--data", f"npz:{data}"], "samples are"),
                      (["eval", "--samples", str(own)], "--samples needs --data"),
                      (["eval", "zoo:fashion-mnist", "--samples", str(own), "--data", f"npz:{data}"], "one of the two"),
                      (["eval", "--samples", str(tmp_path / "none.npz"), "--data", f"npz:{data}"], "file not found")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and "Traceback" not in err and len(err.splitlines()) == 1


# ---- CaG: noise annealing, statistics, data seeds ---------------------------------------------
class Quadrant(nn.Module):
    """Logits [B, 4] = mean brightness of each quadrant of a 1-channel image in [0, 1] (times 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.class_names = ["tl", "tr", "bl", "br"]
        self.channels = 1
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)  # [B, 4]
        return self.scale * q


def test_noise_schedule_and_noisy_forward():
    cfg = CaGConfig(size=8, noise=0.5, noise_end=0.1)
    assert noise_at(cfg, 0, 5) == pytest.approx(0.5) and noise_at(cfg, 4, 5) == pytest.approx(0.1) and noise_at(cfg, 2, 5) == pytest.approx(0.3)
    clf = wrap_module(Quadrant(), "quad")
    x = torch.full((2, 1, 8, 8), 0.5)
    clean = logits_and_features(clf, x)[0]
    assert torch.equal(noisy_logits_and_features(clf, x, 0.0, torch.Generator())[0], clean)
    a = noisy_logits_and_features(clf, x, 0.3, torch.Generator().manual_seed(0))[0]
    b = noisy_logits_and_features(clf, x, 0.3, torch.Generator().manual_seed(0))[0]
    assert torch.equal(a, b) and not torch.allclose(a, clean)


def test_egc_head_sees_noise_at_its_matching_timestep(tmp_path):
    from egc.cli import main

    npz = make_npz(tmp_path / "t.npz", n=24)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--data", f"npz:{npz}", "--steps", "1", "--quiet", "--set", "model.size=tiny",
                 "--set", "train.batch_size=8", "--set", "train.sample_n=3", "--set", "train.sample_steps=2"]) == 0
    clf = load_classifier(f"egc:{run}")
    ac = clf.model.schedule.alphas_cumprod
    for t in (50, 400, 900):
        sigma = float(((1 - ac[t]) / ac[t]).sqrt()) / 2
        assert clf.timestep_for(sigma) == t
    imgs = generate(clf, 1, 2, CaGConfig(size=8, steps=3, batch=2, noise=0.5, mask=False), progress=False)
    assert imgs.shape == (2, 1, 8, 8) and torch.isfinite(imgs).all()


def test_annealed_noise_reaches_the_class_and_changes_the_images():
    clf = wrap_module(Quadrant(), "quad")
    base = CaGConfig(size=8, steps=30, batch=4, lr=0.1, mask=False, jitter=0, flip=False, param="pixel")
    plain = generate(clf, 3, 4, base, progress=False)
    noisy = generate(clf, 3, 4, CaGConfig(**{**base.to_dict(), "noise": 0.5}), progress=False)
    assert not torch.allclose(plain, noisy)
    for imgs in (plain, noisy):
        assert (clf(imgs).argmax(1) == 3).all()


def test_feature_statistics_by_hand():
    clf = wrap_module(Quadrant(), "quad")
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(12) % 3
    stats = class_feature_stats(clf, x, y, batch_size=5)
    feats = logits_and_features(clf, x)[1]
    for c in range(3):
        f = feats[y == c]
        assert torch.allclose(stats[c][0], f.mean(0), atol=1e-6)
        assert torch.allclose(stats[c][1], f.std(0, unbiased=False), atol=1e-6)


def test_pixel_prior_fits_and_seeds_generation():
    g = torch.Generator().manual_seed(0)
    # class 0 dark, class 1 bright, each with a little variation along one direction
    base = torch.tensor([0.2, 0.8]).view(2, 1, 1, 1, 1)
    x = (base + 0.1 * torch.randn(2, 50, 1, 1, 1, generator=g) * torch.ones(1, 1, 1, 8, 8)).reshape(100, 1, 8, 8).clamp(0, 1)
    y = torch.arange(2).repeat_interleave(50)
    prior = PixelPrior.fit(x, y, rank=3)
    draws = prior.sample(1, 400, torch.Generator().manual_seed(1))
    assert draws.shape == (400, 1, 8, 8)
    assert float(draws.mean()) == pytest.approx(float(x[y == 1].mean()), abs=0.02)
    assert float(draws.std()) == pytest.approx(float(x[y == 1].std()), abs=0.03)
    clf = wrap_module(Quadrant(), "quad")
    cfg = CaGConfig(size=8, steps=1, lr=1e-6, batch=2, mask=False, jitter=0, flip=False, init="data", param="pixel", div_weight=0)
    seeded = generate(clf, 1, 2, cfg, prior=prior, progress=False)
    assert float(seeded.mean()) > 0.6  # starts from the bright class's Gaussian, not mid-grey
    with pytest.raises(EgcError, match="needs a prior"):
        generate(clf, 1, 2, cfg, progress=False)
    with pytest.raises(EgcError, match="pixel parameterisation"):
        CaGConfig(size=128, init="data").validate()


def test_cli_stats_from_and_init_data(tmp_path, capsys):
    from egc.cli import main

    data = make_npz(tmp_path / "d.npz", n=30, size=8, classes=3)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--data", f"npz:{data}", "--steps", "1", "--quiet", "--set", "model.size=tiny",
                 "--set", "train.batch_size=8", "--set", "train.sample_n=3", "--set", "train.sample_steps=2"]) == 0
    capsys.readouterr()
    out = tmp_path / "g.png"
    assert main(["cag", "--classifier", f"egc:{run}", "--target", "c1", "--n", "2", "--steps", "2", "--out", str(out), "--quiet",
                 "--stats-from", f"npz:{data}", "--init", "data", "--noise", "0.3"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["n"] == 2 and out.is_file()
    assert main(["cag", "--classifier", f"egc:{run}", "--target", "c1", "--init", "data", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--init data needs --stats-from" in err and len(err.splitlines()) == 1


def test_spectral_slope_of_white_noise_and_of_smooth_images():
    from egc.eval.naturalness import spectral_slope

    noise = torch.rand(32, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert abs(spectral_slope(noise)) < 0.3  # white: flat spectrum
    assert spectral_slope(smooth_images(32, size=32)) < -2.5  # bilinear blow-ups of 4 x 4: steep fall


def test_recommended_config_drives_egc_heads_through_their_noisy_head(tmp_path):
    from egc.cag.generate import EGC_NOISE_T, recommended_config
    from egc.cli import main

    plain = recommended_config(wrap_module(Quadrant(), "quad"), 8, seed=3)
    assert plain == CaGConfig(size=8, seed=3)  # ordinary classifiers: the paper's parts, unchanged
    npz = make_npz(tmp_path / "t.npz", n=24)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--data", f"npz:{npz}", "--steps", "1", "--quiet", "--set", "model.size=tiny",
                 "--set", "train.batch_size=8", "--set", "train.sample_n=3", "--set", "train.sample_steps=2"]) == 0
    head = load_classifier(f"egc:{run}")
    cfg = recommended_config(head, 8, steps=7)
    assert head.timestep_for(cfg.noise) == EGC_NOISE_T and cfg.noise_end == 0 and not cfg.mask and cfg.steps == 7


def test_decorrelated_colour_mixes_channels_at_the_same_scale():
    from egc.cag.param import init_param, param_image

    z = init_param("fourier", 64, 3, 32, 1.0, torch.Generator().manual_seed(0))
    rgb, dec = param_image("fourier", z), param_image("fourier", z, colour="decorrelated")
    assert not torch.allclose(rgb, dec)
    assert float(dec.std()) == pytest.approx(float(rgb.std()), rel=0.25)
    # the channels of a decorrelated image move together (brightness dominates): strongly correlated
    c = torch.corrcoef(dec.permute(1, 0, 2, 3).flatten(1))
    assert float(c[0, 1]) > 0.5 and abs(float(torch.corrcoef(rgb.permute(1, 0, 2, 3).flatten(1))[0, 1])) < 0.1
    with pytest.raises(EgcError, match="needs the fourier"):
        CaGConfig(size=32, colour="decorrelated").validate()


class Halves(nn.Module):
    """Logits [B, 3] = 10 x (mean of the top half, mean of the bottom half, 1 - mean): mirror-invariant,
    as CaG's random flips need."""

    def __init__(self) -> None:
        super().__init__()
        self.class_names = ["top", "bottom", "dark"]
        self.channels = 1
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-2] // 2
        top, bottom = x[..., :h, :].mean(dim=(1, 2, 3)), x[..., h:, :].mean(dim=(1, 2, 3))
        return self.scale * torch.stack([top, bottom, 1 - x.mean(dim=(1, 2, 3))], 1)


def _trained_cnn(tmp: Path) -> Path:
    """A FeatureCNN fitted for a few steps to make_npz's corner-square classes (16 x 16, 3 classes)."""
    from egc.eval.features import FeatureCNN, save_feature_net

    with np.load(make_npz(tmp / "c.npz", n=48, size=16, classes=3)) as z:
        x = torch.from_numpy(z["images"]).permute(0, 3, 1, 2).float() / 127.5 - 1
        y = torch.from_numpy(z["labels"])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = FeatureCNN(1, 3, width=4, feat_dim=8)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_feature_net(net.eval(), tmp / "c.safetensors", {"name": "tinycnn", "image_shape": [1, 16, 16], "class_names": ["c0", "c1", "c2"]})
    return tmp / "c.safetensors"


@pytest.mark.parametrize("kind", ["module", "cnn-file", "egc-head"])
def test_defaults_reach_the_class_for_every_classifier_kind(kind, tmp_path):
    """egc cag's defaults (recommended_config, as the CLI and the page run them) for each kind of classifier
    the project offers, on tiny trained networks: the generating classifier puts every image in the class."""
    from egc.cag.generate import recommended_config

    if kind == "module":
        clf, target = wrap_module(Halves(), "halves"), 1
    elif kind == "cnn-file":
        clf, target = load_classifier(str(_trained_cnn(tmp_path))), 1
    else:
        from egc.cli import main

        npz = make_npz(tmp_path / "t.npz", n=24)
        assert main(["train", "--out", str(tmp_path / "run"), "--data", f"npz:{npz}", "--steps", "40", "--quiet", "--set", "model.size=tiny",
                     "--set", "train.batch_size=8", "--set", "train.sample_n=3", "--set", "train.sample_steps=2", "--set", "train.lr=3e-3",
                     "--set", "train.precision=fp32"]) == 0  # fp32 on every host: bf16 hosts would train a different 40-step head
        clf, target = load_classifier(f"egc:{tmp_path / 'run'}"), 0
        with np.load(npz) as z:  # a 40-step head is unsure even of real images: beat its confidence on them
            real = torch.from_numpy(z["images"][z["labels"] == target]).permute(0, 3, 1, 2).float() / 255
    size = clf.input_size or 16
    imgs = generate(clf, target, 3, recommended_config(clf, size), progress=False)
    with torch.no_grad():
        probs = torch.softmax(clf(imgs), 1)
        # a 40-step head is unsure even of real images, so its generated images are held to its mean confidence on
        # real ones (mean against mean: one image a hair under the real mean is not a failure of the defaults)
        if kind == "egc-head":
            ok = float(probs[:, target].mean()) >= float(torch.softmax(clf(real), 1)[:, target].mean())
        else:
            ok = bool((probs[:, target] > 0.5).all())
    assert (probs.argmax(1) == target).all() and ok, probs


def test_naturalness_of_too_few_images_per_class_is_nan_not_an_error():
    real = smooth_images(4, seed=5)
    out = naturalness(smooth_images(4, seed=6), torch.tensor([0, 1, 2, 3]), real, torch.tensor([0, 1, 2, 3]))
    assert out["diversity_ratio"] != out["diversity_ratio"] and "no class" in out["diversity_note"]  # NaN
    # the spectrum statistic still works with too few images per class: 0 for a set against itself,
    # larger for white noise (all frequencies) than for another smooth set (low frequencies only)
    assert out["spectrum_distance"] > 0
    same = naturalness(real, torch.tensor([0, 1, 2, 3]), real, torch.tensor([0, 1, 2, 3]))
    assert same["spectrum_distance"] == pytest.approx(0.0, abs=1e-9)
    noise = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(7))
    far = naturalness(noise, torch.tensor([0, 1, 2, 3]), real, torch.tensor([0, 1, 2, 3]))
    assert far["spectrum_distance"] > 3 * out["spectrum_distance"]
