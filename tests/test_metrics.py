"""Fast, deterministic checks of the judge metrics and the feature network's file format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from egc.errors import CheckpointError
from egc.eval.features import FeatureCNN, load_feature_net, save_feature_net
from egc.eval.fid import (
    extract_features,
    frechet_distance,
    gaussian_stats,
    kid,
    metric_name,
    precision_recall,
)
from egc.eval.judge import Judge, judge_samples, load_judge


def _gauss(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def _random_spd(d: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ----------------------------------------------------------------------------- Frechet distance


def test_fd_of_set_with_itself_is_zero() -> None:
    mu, sigma = gaussian_stats(_gauss(200, 16, seed=0))
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_fd_rank_deficient_covariance_with_itself_is_zero() -> None:
    # Fewer samples than dimensions -> singular covariance; the eigh path must stay real and ~0.
    mu, sigma = gaussian_stats(_gauss(10, 32, seed=1))
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)


def test_fd_diagonal_gaussians_match_closed_form() -> None:
    rng = np.random.default_rng(2)
    d = 8
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2.0 * np.sqrt(v1 * v2))
    got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_fd_full_covariance_matches_commuting_case() -> None:
    # Same eigenvectors (commuting covariances): sqrt(s1 s2) = Q sqrt(L1 L2) Q^T exactly.
    rng = np.random.default_rng(3)
    d = 6
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    l1, l2 = rng.uniform(0.2, 2.0, size=d), rng.uniform(0.2, 2.0, size=d)
    s1, s2 = (q * l1) @ q.T, (q * l2) @ q.T
    mu = np.zeros(d)
    expected = np.sum(l1 + l2 - 2.0 * np.sqrt(l1 * l2))
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-9)


def test_fd_symmetric_and_matches_eigenvalues_of_the_product() -> None:
    # Non-commuting full covariances: tr(sqrt(s1 s2)) is the sum of the square roots of the
    # eigenvalues of s1 s2 (real and positive: s1 s2 is similar to an SPD matrix), computed here
    # with a general (non-symmetric) eigen-solver, not the library's eigh route.
    d = 12
    rng = np.random.default_rng(4)
    for seed in range(5):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = _random_spd(d, 10 + seed), _random_spd(d, 20 + seed)
        lam = np.linalg.eigvals(s1 @ s2)
        assert np.abs(lam.imag).max() < 1e-9 and lam.real.min() > 0
        expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * np.sqrt(lam.real).sum()
        a = frechet_distance(mu1, s1, mu2, s2)
        b = frechet_distance(mu2, s2, mu1, s1)
        assert a == pytest.approx(expected, rel=1e-9)
        assert a == pytest.approx(b, rel=1e-9)


def test_fd_accepts_torch_and_scipy_agrees_when_available() -> None:
    s1, s2 = _random_spd(5, 30), _random_spd(5, 31)
    mu1, mu2 = np.zeros(5), np.ones(5)
    ref = frechet_distance(mu1, s1, mu2, s2)
    t = frechet_distance(torch.tensor(mu1), torch.tensor(s1), torch.tensor(mu2), torch.tensor(s2))
    assert t == pytest.approx(ref, rel=1e-12)
    pytest.importorskip("scipy")
    assert frechet_distance(mu1, s1, mu2, s2, method="scipy") == pytest.approx(ref, rel=1e-7)


def test_gaussian_stats_matches_numpy() -> None:
    x = _gauss(50, 4, seed=5)
    mu, sigma = gaussian_stats(torch.from_numpy(x))
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-10)


# ----------------------------------------------------------------------------- KID


def test_kid_same_distribution_near_zero_and_shift_positive() -> None:
    a, b = _gauss(300, 8, seed=6), _gauss(300, 8, seed=7)
    same, _ = kid(a, b, subsets=20, subset_size=100, seed=0)
    shifted, std = kid(a, _gauss(300, 8, seed=8, shift=1.0), subsets=20, subset_size=100, seed=0)
    assert abs(same) < 0.02
    assert shifted > 0.1 and shifted > 10 * abs(same)
    # std is the spread of the per-subset values: 200 one-subset runs (each seed draws its own
    # subsets) are an independent sample of those values, so a 200-subset run's mean and std must
    # agree with theirs (std ~0.04 here: a variance, or a standard error, would be 20x off).
    many, spread = kid(a, b, subsets=200, subset_size=100, seed=0)
    singles = np.array([kid(a, b, subsets=1, subset_size=100, seed=s) for s in range(100, 300)])
    assert np.all(singles[:, 1] == 0.0)  # one subset: no spread
    assert abs(many - singles[:, 0].mean()) < 4 * np.hypot(spread, singles[:, 0].std()) / np.sqrt(200)
    assert 0.5 * singles[:, 0].std() < spread < 2.0 * singles[:, 0].std()


def test_kid_full_sets_equal_unbiased_mmd_by_hand() -> None:
    # subset_size >= N: every subset is the whole set (reordered), so every subset gives the same
    # value (std ~ 0) and the mean is the unbiased MMD^2 of the two sets, written out here as sums
    # over pairs with k(x, y) = (x.y / D + 1)^3.
    a, b = _gauss(7, 3, seed=20), _gauss(6, 3, seed=21, shift=0.7)
    m = 6  # rows per set and per subset
    mean, std = kid(a[:6], b, subsets=4, subset_size=50, seed=1)

    def k(x, y):
        return (float(x @ y) / 3 + 1.0) ** 3

    aa = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    bb = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    ab = sum(k(a[i], b[j]) for i in range(m) for j in range(m)) / (m * m)
    assert mean == pytest.approx(aa + bb - 2 * ab, rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)
    # With a 7-row set only 6 rows fit in a subset: the subsets differ and so do their values.
    assert kid(a, b, subsets=8, subset_size=50, seed=1)[1] > 1e-6


def test_kid_is_deterministic_given_seed() -> None:
    a, b = _gauss(100, 4, seed=9), _gauss(100, 4, seed=10, shift=0.5)
    assert kid(a, b, subsets=5, subset_size=50, seed=3) == kid(a, b, subsets=5, subset_size=50, seed=3)


# ----------------------------------------------------------------------------- precision / recall


def test_precision_recall_identical_sets_are_one() -> None:
    x = _gauss(100, 6, seed=11)
    assert precision_recall(x, x.copy(), k=3) == (1.0, 1.0)


def test_precision_recall_far_apart_sets_are_zero() -> None:
    p, r = precision_recall(_gauss(100, 6, seed=12), _gauss(100, 6, seed=13, shift=50.0), k=3)
    assert p == 0.0 and r == 0.0


def test_precision_recall_mode_dropping_keeps_precision_loses_recall() -> None:
    # Fake samples cover only half of the real data: high fidelity, low coverage.
    real = np.concatenate([_gauss(100, 2, seed=14), _gauss(100, 2, seed=15, shift=20.0)])
    fake = _gauss(100, 2, seed=16)
    p, r = precision_recall(real, fake, k=3)
    assert p > 0.9 and r < 0.6


# ----------------------------------------------------------------------------- names


def test_metric_names_carry_feature_net() -> None:
    assert metric_name("fd", "fashioncnn") == "fd_fashioncnn"
    assert metric_name("kid", "fashioncnn") == "kid_fashioncnn"
    with pytest.raises(ValueError):
        metric_name("fid", "fashioncnn")
    with pytest.raises(ValueError):
        metric_name("fd", "")


# ----------------------------------------------------------------------------- feature network


def _tiny_net(seed: int = 0, in_ch: int = 1) -> FeatureCNN:
    torch.manual_seed(seed)
    net = FeatureCNN(in_ch, 4, width=4, feat_dim=16)
    # Non-trivial BatchNorm running stats, so the round trip checks buffers too.
    net.train()
    with torch.no_grad():
        net(torch.rand(8, in_ch, 16, 16) * 2 - 1)
    return net.eval()


def test_feature_cnn_shapes_for_several_sizes() -> None:
    net = _tiny_net(in_ch=3)
    for h, w in [(16, 16), (28, 28), (32, 20)]:
        x = torch.rand(2, 3, h, w) * 2 - 1
        assert net(x).shape == (2, 4)
        assert net.features(x).shape == (2, 16)
    with pytest.raises(ValueError):
        net(torch.zeros(1, 3, 8, 8))


def test_feature_net_save_load_round_trip(tmp_path) -> None:
    net = _tiny_net()
    path = tmp_path / "tiny.safetensors"
    meta = {"name": "tinycnn", "dataset": "synthetic", "test_accuracy": 0.5}
    save_feature_net(net, path, meta)
    net2, meta2 = load_feature_net(path)
    assert meta2 == meta
    assert net2.config() == net.config()
    x = torch.rand(5, 1, 20, 20) * 2 - 1
    assert torch.equal(net(x), net2(x))
    assert torch.equal(net.features(x), net2.features(x))
    # No pickle: the header is plain JSON strings.
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["meta"])["name"] == "tinycnn"


def test_load_feature_net_rejects_foreign_and_missing(tmp_path) -> None:
    from safetensors.torch import save_file

    foreign = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError):
        load_feature_net(foreign)
    with pytest.raises(CheckpointError):
        load_feature_net(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError):
        load_judge("zoo:no_such_model")


def test_extract_features_no_grad_restores_mode() -> None:
    net = _tiny_net()
    net.train()
    feats = extract_features(net, torch.rand(7, 1, 16, 16) * 2 - 1, batch_size=3)
    assert feats.shape == (7, 16) and feats.dtype == torch.float64
    assert not feats.requires_grad
    assert net.training


# ----------------------------------------------------------------------------- judge


def test_judge_samples_keys_carry_name(tmp_path) -> None:
    path = tmp_path / "tinycnn.safetensors"
    save_feature_net(_tiny_net(), path, {"name": "tinycnn", "dataset": "synthetic"})
    judge = load_judge(path)
    assert isinstance(judge, Judge) and judge.name == "tinycnn"
    g = torch.Generator().manual_seed(0)
    samples = torch.rand(12, 1, 16, 16, generator=g) * 2 - 1
    labels = torch.randint(0, 4, (12,), generator=g)
    test_images = torch.rand(20, 1, 16, 16, generator=g) * 2 - 1
    out = judge_samples(judge, samples, labels, test_images, kid_subsets=3, kid_subset_size=8)
    for kind in ("cond_acc", "fd", "kid", "precision", "recall"):
        assert f"{kind}_tinycnn" in out
    assert out["n"] == 12
    assert not any(k.lower().startswith("fid") for k in out)
    # cond_acc against the judge's own forward pass: labels equal to its prediction for the first 5
    # samples and wrong for the other 7, so the share is exactly 5 / 12.
    net = judge.net.eval()
    with torch.no_grad():
        pred = net(samples).argmax(1)
    asked = torch.where(torch.arange(12) < 5, pred, (pred + 1) % 4)
    out = judge_samples(judge, samples, asked, test_images, kid_subsets=3, kid_subset_size=8)
    assert out["cond_acc_tinycnn"] == pytest.approx(5 / 12, abs=1e-12)
    # FD against the features' Gaussians computed here (12 samples < 16 dims: a singular covariance).
    with torch.no_grad():
        fr, ff = net.features(test_images).double().numpy(), net.features(samples).double().numpy()
    mu_r, mu_f = fr.mean(0), ff.mean(0)
    s_r, s_f = np.cov(fr, rowvar=False), np.cov(ff, rowvar=False)
    lam = np.linalg.eigvals(s_r @ s_f)
    expected_fd = np.sum((mu_r - mu_f) ** 2) + np.trace(s_r) + np.trace(s_f) - 2 * np.sqrt(np.clip(lam.real, 0, None)).sum()
    assert out["fd_tinycnn"] == pytest.approx(expected_fd, rel=1e-5) and expected_fd > 1e-3
    # Judging the reference set against itself: FD ~ 0, full precision and recall.
    same = judge_samples(judge, test_images, labels.repeat(2)[:20], test_images, kid_subsets=2)
    assert same["fd_tinycnn"] == pytest.approx(0.0, abs=1e-6)
    assert same["precision_tinycnn"] == 1.0 and same["recall_tinycnn"] == 1.0
