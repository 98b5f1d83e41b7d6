"""Statistics of generated images that use no network (so no network can be fooled into them).

A classifier judge can put 98 % of a set of rainbow textures in the requested class: textures that
carry a class's features are recognised by any network trained on the same data. These numbers
compare generated images with real ones directly in pixel space:

- ``spectrum_distance``: the radially averaged power spectrum of the images (log10 of the mean power
  at each integer spatial frequency 1..S/2, DC excluded: brightness is not texture), RMS difference
  over frequencies between the two sets. Noise textures carry far too much high-frequency power
  (measured: CaG textures from a CIFAR-10 head 1.01, EGC samples 0.14, one half of the real test
  set against the other about 0.02).
- ``diversity_ratio``: the mean RMS pixel distance between two images of the same class, generated
  over real, averaged over classes. Near-identical images within a class give a ratio far below 1.
- ``spectral_slope``: needs no real set: the log-log slope of that spectrum, about -2 for photographs.
- ``histogram_distance``: the Wasserstein-1 distance between the pixel-value distributions (all
  pixels and channels, [0, 1] scale), which sees a missing black background or saturated colours.

Images are float [N, C, H, W] in [0, 1] everywhere in this module.
"""

from __future__ import annotations

import math

import torch

from egc.errors import EgcError


def _check(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dim() != 4 or not x.is_floating_point():
        raise EgcError(f"{what} must be float images [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise EgcError(f"{what}: no images")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise EgcError(f"{what} must be in [0, 1], got range [{lo:.3g}, {hi:.3g}]")
    return x.double()


def radial_power_spectrum(x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """log10 of the mean power at integer radii 1..min(H, W)//2 for images x [N, C, H, W] in [0, 1].

    The power is |FFT2|^2 / (H W) of each channel, averaged over images, channels and the frequencies
    whose rounded radius is r. Returns float64 [min(H, W) // 2].
    """
    x = _check(x, "images")
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, d=1.0 / h, dtype=torch.float64)
    fx = torch.fft.fftfreq(w, d=1.0 / w, dtype=torch.float64)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2).round().long()  # [H, W]
    rmax = min(h, w) // 2
    total = torch.zeros(h, w, dtype=torch.float64)
    for i in range(0, x.shape[0], batch_size):
        f = torch.fft.fft2(x[i:i + batch_size])
        total += (f.real ** 2 + f.imag ** 2).sum(dim=(0, 1)) / (h * w)
    total /= x.shape[0] * x.shape[1]
    out = torch.empty(rmax, dtype=torch.float64)
    for r in range(1, rmax + 1):
        out[r - 1] = total[radius == r].mean()
    return torch.log10(out.clamp_min(1e-12))


def spectrum_distance(fake: torch.Tensor, real: torch.Tensor) -> float:
    """RMS over frequencies of the difference of the two sets' log10 radial power spectra (0 = same)."""
    if fake.shape[-2:] != real.shape[-2:]:
        raise EgcError(f"generated images are {tuple(fake.shape[-2:])} but real ones {tuple(real.shape[-2:])}")
    d = radial_power_spectrum(fake) - radial_power_spectrum(real)
    return float(d.pow(2).mean().sqrt())


def mean_pairwise_distance(x: torch.Tensor, max_images: int = 200, seed: int = 0) -> float:
    """Mean RMS pixel distance over pairs i != j of images x [N, C, H, W] (at most ``max_images``,
    a seeded subset, so the cost stays quadratic in a small number). NaN for fewer than 2 images."""
    x = _check(x, "images")
    if x.shape[0] < 2:
        return float("nan")
    if x.shape[0] > max_images:
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_images]
        x = x[idx]
    f = x.flatten(1)
    d2 = torch.cdist(f, f).pow(2) / f.shape[1]  # [n, n] mean squared difference per pixel
    n = f.shape[0]
    return float(d2.sqrt().sum() / (n * (n - 1)))


def diversity_ratio(fake: torch.Tensor, fake_labels: torch.Tensor, real: torch.Tensor, real_labels: torch.Tensor,
                    max_images: int = 200, seed: int = 0) -> tuple[float, dict[int, float]]:
    """(mean over classes, {class: ratio}) of the within-class mean pairwise pixel distance of the
    generated images over that of the real ones. Classes with fewer than 2 images on either side are
    left out; EgcError when none is left."""
    fake_labels = torch.as_tensor(fake_labels).reshape(-1).long()
    real_labels = torch.as_tensor(real_labels).reshape(-1).long()
    if fake_labels.numel() != fake.shape[0] or real_labels.numel() != real.shape[0]:
        raise EgcError("diversity_ratio: one label per image is needed on both sides")
    ratios: dict[int, float] = {}
    for c in sorted(set(fake_labels.tolist())):
        f, r = fake[fake_labels == c], real[real_labels == c]
        if f.shape[0] < 2 or r.shape[0] < 2:
            continue
        ratios[int(c)] = mean_pairwise_distance(f, max_images, seed) / mean_pairwise_distance(r, max_images, seed)
    if not ratios:
        raise EgcError("diversity_ratio: no class has at least 2 generated and 2 real images")
    return sum(ratios.values()) / len(ratios), ratios


#: The radially averaged power spectrum of natural photographs falls as about 1 / f^2 (slope -2 in log-log;
#: van der Schaaf & van Hateren 1996 measured -1.88 +- 0.43 over 276 photographs).
NATURAL_SLOPE = -2.0


def spectral_slope(x: torch.Tensor) -> float:
    """Least-squares slope of log10 power against log10 frequency for images x [N, C, H, W] in [0, 1]
    (radii 1..min(H, W)//2): the one reference-free statistic here, for images with no real set to
    compare with (ImageNet CaG); natural photographs give about NATURAL_SLOPE, noise textures nearer 0."""
    spec = radial_power_spectrum(x)
    logf = torch.log10(torch.arange(1, spec.shape[0] + 1, dtype=torch.float64))
    a = torch.stack([logf, torch.ones_like(logf)], 1)
    return float(torch.linalg.lstsq(a, spec[:, None]).solution[0, 0])


def histogram_distance(fake: torch.Tensor, real: torch.Tensor, bins: int = 256) -> float:
    """Wasserstein-1 distance between the pixel-value distributions of the two sets ([0, 1] scale)."""
    hf = torch.histc(_check(fake, "generated images").flatten().float(), bins=bins, min=0, max=1).double()
    hr = torch.histc(_check(real, "real images").flatten().float(), bins=bins, min=0, max=1).double()
    cdf = (hf / hf.sum()).cumsum(0) - (hr / hr.sum()).cumsum(0)
    return float(cdf.abs().sum() / bins)


def naturalness(fake: torch.Tensor, fake_labels: torch.Tensor | None, real: torch.Tensor, real_labels: torch.Tensor | None,
                seed: int = 0) -> dict[str, float]:
    """Every statistic of this module for generated images against real ones (both [N, C, H, W] in [0, 1]).

    Keys: ``spectrum_distance``, ``histogram_distance``, ``diversity_ratio`` (within-class when both
    label sets are given and not all -1, else over the whole set, key ``diversity_ratio_all``).
    """
    fake, real = _check(fake, "generated images"), _check(real, "real images")
    if fake.shape[1:] != real.shape[1:]:
        raise EgcError(f"generated images are {tuple(fake.shape[1:])} but real ones {tuple(real.shape[1:])} (C, H, W)")
    out = {"spectrum_distance": spectrum_distance(fake, real), "histogram_distance": histogram_distance(fake, real)}
    conditional = fake_labels is not None and real_labels is not None and bool((torch.as_tensor(fake_labels) >= 0).all())
    if conditional:
        try:
            out["diversity_ratio"], per = diversity_ratio(fake, fake_labels, real, real_labels, seed=seed)
            out["diversity_ratio_min_class"] = min(per.values())
        except EgcError as e:  # too few images per class (a tiny evaluation): the other figures still stand
            out["diversity_ratio"] = math.nan
            out["diversity_note"] = str(e)
    else:
        d_f, d_r = mean_pairwise_distance(fake, seed=seed), mean_pairwise_distance(real, seed=seed)
        out["diversity_ratio_all"] = d_f / d_r if d_r > 0 else math.nan
    return out
