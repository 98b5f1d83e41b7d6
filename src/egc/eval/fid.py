"""Sample-quality metrics in the feature space of a judge network.

All metric functions are pure: they take feature matrices (``numpy`` arrays or ``torch``
tensors, ``[N, D]``), compute in float64 numpy, and return Python floats or float64 arrays.

Naming rule: a Frechet distance is only meaningful together with the network whose features it
was computed on, so every printed/logged metric name carries that network's name, e.g.
``fd_fashioncnn``; build names with :func:`metric_name`, never write a bare "FID".
"""

from __future__ import annotations

from typing import Literal, Union

import numpy as np
import torch
from torch import nn

ArrayLike = Union[np.ndarray, torch.Tensor]

#: Metric kinds that :func:`metric_name` accepts.
METRIC_KINDS = ("fd", "kid", "kid_std", "precision", "recall", "cond_acc")


def metric_name(kind: str, feature_name: str) -> str:
    """``metric_name("fd", "fashioncnn") -> "fd_fashioncnn"``.

    Raises ValueError for unknown kinds (including "fid": the Inception-based FID is a different
    number, and calling ours that would invite false comparisons) or an empty feature name.
    """
    if kind not in METRIC_KINDS:
        raise ValueError(f"unknown metric kind {kind!r}; expected one of {METRIC_KINDS}")
    if not feature_name or any(c.isspace() for c in feature_name):
        raise ValueError(f"feature network name must be a non-empty word, got {feature_name!r}")
    return f"{kind}_{feature_name}"


def _as_f64(x: ArrayLike, what: str) -> np.ndarray:
    """Copy-free where possible conversion to a float64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or inf")
    return arr


def _as_feats(x: ArrayLike, what: str, min_rows: int = 1) -> np.ndarray:
    arr = _as_f64(x, what)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be [N, D], got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{what} needs at least {min_rows} rows, got {arr.shape[0]}")
    return arr


def gaussian_stats(feats: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased (ddof=1) covariance of features.

    Args:
        feats: ``[N, D]``, N >= 2.
    Returns:
        ``(mu [D], sigma [D, D])`` float64.
    """
    f = _as_feats(feats, "feats", min_rows=2)
    mu = f.mean(axis=0)
    centred = f - mu
    sigma = centred.T @ centred / (f.shape[0] - 1)
    # Exact symmetry: matmul rounding can leave ~1e-17 asymmetry, which eigh would ignore
    # silently but the scipy path would turn into spurious imaginary parts.
    sigma = 0.5 * (sigma + sigma.T)
    return mu, sigma


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix via eigh; negative rounding noise in the
    eigenvalues is clipped to 0 so the result stays real."""
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _trace_sqrt_product_eigh(s1: np.ndarray, s2: np.ndarray) -> float:
    """``tr(sqrt(s1 @ s2))`` for symmetric PSD ``s1, s2``.

    ``s1 @ s2`` is not symmetric, so a general sqrtm is ill-conditioned on it. But it is similar
    to ``A = s1^{1/2} s2 s1^{1/2}``, which *is* symmetric PSD and has the same eigenvalues, so
    ``tr(sqrt(s1 s2)) = sum_i sqrt(lambda_i(A))`` with a stable symmetric eigen-solver.
    """
    r1 = _psd_sqrt(s1)
    a = r1 @ s2 @ r1
    a = 0.5 * (a + a.T)
    w = np.linalg.eigvalsh(a)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def _trace_sqrt_product_scipy(s1: np.ndarray, s2: np.ndarray) -> float:
    """Reference path with ``scipy.linalg.sqrtm`` (the classic FID recipe); scipy is optional."""
    from scipy import linalg  # type: ignore[import-not-found]

    covmean = linalg.sqrtm(s1 @ s2)
    if isinstance(covmean, tuple):  # older scipy returned (sqrtm, errest) with disp=False
        covmean = covmean[0]
    if not np.all(np.isfinite(covmean)):
        # Singular product: regularise both sides slightly, as the reference FID code does.
        eps = 1e-6 * np.eye(s1.shape[0])
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    return float(np.real(np.trace(covmean)))


def frechet_distance(
    mu1: ArrayLike,
    sigma1: ArrayLike,
    mu2: ArrayLike,
    sigma2: ArrayLike,
    method: Literal["eigh", "scipy", "auto"] = "eigh",
) -> float:
    """Frechet (2-Wasserstein squared) distance between two Gaussians.

    ``d = |mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr(sqrt(s1 s2))``.

    Args:
        mu1, mu2: ``[D]``; sigma1, sigma2: ``[D, D]`` symmetric PSD.
        method: ``"eigh"`` (default; numpy only, symmetric eigen-decomposition, deterministic
            across machines), ``"scipy"`` (``scipy.linalg.sqrtm``; ImportError without scipy) or
            ``"auto"`` (scipy when importable, else eigh).
    Returns:
        The distance as a float, clipped at 0 (it can only go negative through rounding).
    """
    m1, m2 = _as_f64(mu1, "mu1"), _as_f64(mu2, "mu2")
    s1, s2 = _as_f64(sigma1, "sigma1"), _as_f64(sigma2, "sigma2")
    d = m1.shape[0]
    if m1.shape != (d,) or m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"frechet_distance: shape mismatch mu1{m1.shape} sigma1{s1.shape} "
            f"mu2{m2.shape} sigma2{s2.shape}"
        )
    s1 = 0.5 * (s1 + s1.T)
    s2 = 0.5 * (s2 + s2.T)
    if method == "auto":
        try:
            import scipy.linalg  # type: ignore[import-not-found]  # noqa: F401

            method = "scipy"
        except ImportError:
            method = "eigh"
    if method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(s1, s2)
    elif method == "scipy":
        tr_covmean = _trace_sqrt_product_scipy(s1, s2)
    else:
        raise ValueError(f"unknown method {method!r}")
    diff = m1 - m2
    dist = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(dist, 0.0)


def frechet_distance_features(feats1: ArrayLike, feats2: ArrayLike) -> float:
    """:func:`frechet_distance` of the Gaussians fitted by :func:`gaussian_stats` to two feature sets.

    Same value as ``frechet_distance(*gaussian_stats(feats1), *gaussian_stats(feats2))``, but when a
    set has fewer rows than dimensions (e.g. 1000 samples of 2048-d Inception features) no
    ``[D, D]`` matrix is formed: with centred ``A [N1, D]``, ``B [N2, D]`` and
    ``c = (N1 - 1)(N2 - 1)``, the nonzero eigenvalues of ``s1 s2 = A^T A B^T B / c`` are the squared
    singular values of ``A B^T / sqrt(c)``, so ``tr(sqrt(s1 s2))`` is their sum, and
    ``tr(s1) = |A|_F^2 / (N1 - 1)``. Cost ``O(N1 N2 (D + min(N1, N2)))`` instead of ``O(D^3)``.

    Args:
        feats1: ``[N1, D]``; feats2: ``[N2, D]``; N1, N2 >= 2.
    """
    x = _as_feats(feats1, "feats1", min_rows=2)
    y = _as_feats(feats2, "feats2", min_rows=2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"frechet_distance_features: feature dims differ: {x.shape[1]} vs {y.shape[1]}")
    if min(x.shape[0], y.shape[0]) > x.shape[1]:
        return frechet_distance(*gaussian_stats(x), *gaussian_stats(y))
    mu1, mu2 = x.mean(axis=0), y.mean(axis=0)
    a, b = x - mu1, y - mu2
    n1, n2 = x.shape[0] - 1, y.shape[0] - 1
    tr_covmean = float(np.linalg.svd(a @ b.T, compute_uv=False).sum()) / np.sqrt(n1 * n2)
    diff = mu1 - mu2
    dist = float(diff @ diff + (a * a).sum() / n1 + (b * b).sum() / n2 - 2.0 * tr_covmean)
    return max(dist, 0.0)


def kid(
    feats1: ArrayLike,
    feats2: ArrayLike,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al., 2018) on arbitrary features.

    Unbiased MMD^2 with the cubic polynomial kernel ``k(x, y) = (x.y / D + 1)^3``, averaged over
    ``subsets`` random subsets of ``m = min(subset_size, N1, N2)`` rows drawn without
    replacement from each set.

    Args:
        feats1: ``[N1, D]``; feats2: ``[N2, D]``; N1, N2 >= 2.
        seed: seeds the subset draws, so the value is reproducible.
    Returns:
        ``(mean, std)`` over subsets. The mean can be slightly negative for matching
        distributions (the estimator is unbiased, not non-negative).
    """
    x = _as_feats(feats1, "feats1", min_rows=2)
    y = _as_feats(feats2, "feats2", min_rows=2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"kid: feature dims differ: {x.shape[1]} vs {y.shape[1]}")
    if subsets < 1:
        raise ValueError(f"kid: subsets must be >= 1, got {subsets}")
    d = x.shape[1]
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"kid: subset_size must be >= 2, got {m}")
    rng = np.random.default_rng(seed)
    values = np.empty(subsets, dtype=np.float64)
    for i in range(subsets):
        a = x[rng.choice(x.shape[0], m, replace=False)]
        b = y[rng.choice(y.shape[0], m, replace=False)]
        k_aa = (a @ a.T / d + 1.0) ** 3
        k_bb = (b @ b.T / d + 1.0) ** 3
        k_ab = (a @ b.T / d + 1.0) ** 3
        # Unbiased: drop the diagonal k(x_i, x_i) terms from the within-set sums.
        sum_aa = k_aa.sum() - np.trace(k_aa)
        sum_bb = k_bb.sum() - np.trace(k_bb)
        values[i] = (sum_aa + sum_bb) / (m * (m - 1)) - 2.0 * k_ab.sum() / (m * m)
    return float(values.mean()), float(values.std())


def _pairwise_dist_chunks(a: np.ndarray, b: np.ndarray, chunk: int = 1024):
    """Yield ``(start, D)`` with ``D = ||a[start:start+chunk] - b||`` of shape ``[c, Nb]``.

    Chunked so that 10k x 10k comparisons never hold the full float64 matrix (800 MB).
    """
    b_sq = (b * b).sum(axis=1)
    for start in range(0, a.shape[0], chunk):
        blk = a[start : start + chunk]
        sq = (blk * blk).sum(axis=1)[:, None] + b_sq[None, :] - 2.0 * blk @ b.T
        yield start, np.sqrt(np.clip(sq, 0.0, None))


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row of ``x`` ``[N, D]`` to its k-th nearest *other* row -> ``[N]``."""
    radii = np.empty(x.shape[0], dtype=np.float64)
    for start, dist in _pairwise_dist_chunks(x, x):
        # Column k (0-based) after partial sort: column 0 is the point itself at distance 0.
        radii[start : start + dist.shape[0]] = np.partition(dist, k, axis=1)[:, k]
    return radii


def _coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray) -> float:
    """Share of ``queries`` inside at least one ball ``B(manifold_i, radii_i)``."""
    inside = np.zeros(queries.shape[0], dtype=bool)
    for start, dist in _pairwise_dist_chunks(queries, manifold):
        inside[start : start + dist.shape[0]] = (dist <= radii[None, :]).any(axis=1)
    return float(inside.mean())


def precision_recall(
    real_feats: ArrayLike, fake_feats: ArrayLike, k: int = 3
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019).

    Each set's manifold is the union of balls around its points with radius = distance to the
    k-th nearest neighbour within the set. Precision = share of fake points inside the real
    manifold (fidelity); recall = share of real points inside the fake manifold (coverage).

    Args:
        real_feats: ``[Nr, D]``; fake_feats: ``[Nf, D]``; both need more than ``k`` rows.
    Returns:
        ``(precision, recall)`` in ``[0, 1]``.
    """
    real = _as_feats(real_feats, "real_feats", min_rows=k + 1)
    fake = _as_feats(fake_feats, "fake_feats", min_rows=k + 1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision_recall: dims differ: {real.shape[1]} vs {fake.shape[1]}")
    if k < 1:
        raise ValueError(f"precision_recall: k must be >= 1, got {k}")
    precision = _coverage(real, _knn_radii(real, k), fake)
    recall = _coverage(fake, _knn_radii(fake, k), real)
    return precision, recall


@torch.no_grad()
def extract_features(
    net: nn.Module,
    images: torch.Tensor,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Run ``net.features`` over ``images`` in batches, without gradients, in eval mode.

    Args:
        net: a module with ``features(x [B,C,H,W]) -> [B, D]`` (e.g. FeatureCNN).
        images: float ``[N, C, H, W]`` in ``[-1, 1]``.
        device: where to run; defaults to the device of the net's parameters.
    Returns:
        float64 CPU tensor ``[N, D]``.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            f"extract_features expects float [N,C,H,W] images, got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    if device is None:
        device = next(net.parameters()).device
    was_training = net.training
    # Eval mode: BatchNorm must use its running statistics, otherwise a sample's features would
    # depend on the rest of its batch.
    net.eval()
    try:
        out = [
            net.features(images[i : i + batch_size].to(device, torch.float32))
            .to("cpu", torch.float64)
            for i in range(0, images.shape[0], batch_size)
        ]
    finally:
        net.train(was_training)
    if not out:
        raise ValueError("extract_features: no images")
    return torch.cat(out)
