"""Image parameterisations for CaG: what the optimiser actually moves.

- ``pixel``: z [B, C, s, s] is a per-pixel logit, x = sigmoid(z) (schedule.to_image).
- ``fourier``: z [B, C, s, s // 2 + 1, 2] holds the real and imaginary parts of the image's 2-D
  real FFT (before the sigmoid), each frequency scaled by 1 / max(f, 1) ** decay with f in cycles per
  image. Adam's step is the same size for every coefficient, so in pixel space low frequencies move
  far more than high ones: the optimiser is steered towards smooth layouts and away from the
  pixel-level patterns that fool only the classifier they were made with (the spectral
  parameterisation of feature-visualisation work). The weights are normalised so that unit-variance
  z gives unit-variance pre-sigmoid pixels, which keeps ``lr`` and ``init_std`` on the pixel scale.

Between progressive stages a Fourier parameter is carried over by zero-padding the spectrum with the
new, higher frequencies (rescaled for the orthonormal transform): the image at the new size is the
band-limited interpolation of the old one, exactly so when the old Nyquist terms are zero (they are
copied as they are, which is close but not exact; they hold little of a 1/f-weighted image).
"""

from __future__ import annotations

import functools

import torch

from ..errors import ConfigError
from .schedule import to_image, upsample_param

PARAMS: tuple[str, ...] = ("pixel", "fourier")


@functools.lru_cache(maxsize=16)
def fourier_weights(s: int, decay: float = 1.0) -> torch.Tensor:
    """Per-frequency scale [s, s // 2 + 1] of the ``fourier`` parameterisation at size s.

    Cached: :func:`param_image` needs it at every optimisation step. Callers must not modify it."""
    fy = torch.fft.fftfreq(s).abs() * s  # cycles per image, rows
    fx = torch.fft.rfftfreq(s) * s  # columns of the half plane
    f = (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt()
    w = f.clamp(min=1.0) ** -decay
    # mean |X|^2 over the full plane = 2 * mean(w^2) for unit-variance real and imaginary parts;
    # the orthonormal inverse FFT then gives pre-sigmoid pixel variance 2 * mean(w^2) -> make it 1.
    return w / (2 * w.pow(2).mean()).sqrt()


def init_param(kind: str, b: int, c: int, s: int, std: float, gen: torch.Generator) -> torch.Tensor:
    """A seeded starting parameter for b images of c channels at size s (near mid-grey)."""
    if kind == "pixel":
        return torch.randn(b, c, s, s, generator=gen) * std
    if kind == "fourier":
        return torch.randn(b, c, s, s // 2 + 1, 2, generator=gen) * std
    raise ConfigError(f"cag parameterisation '{kind}' unknown (choose from {', '.join(PARAMS)})")


#: COLOURS: "rgb" optimises each channel on its own; "decorrelated" optimises three decorrelated colour
#: components that a fixed matrix mixes into RGB before the sigmoid (feature-visualisation practice,
#: Olah et al. 2017): equal steps in the components move pixels along the directions in which natural
#: photographs vary (mostly brightness), so saturated rainbow colours cost more. The matrix is the
#: square root of the colour covariance of ImageNet photographs as that work published it (rows R, G, B),
#: scaled so its largest column has unit norm.
COLOURS: tuple[str, ...] = ("rgb", "decorrelated")
_IMAGENET_COLOUR_SQRT = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))


def colour_matrix() -> torch.Tensor:
    """[3, 3] mixing decorrelated components into RGB (see COLOURS)."""
    m = torch.tensor(_IMAGENET_COLOUR_SQRT)
    return m / m.norm(dim=0).max()


def param_image(kind: str, z: torch.Tensor, decay: float = 1.0, colour: str = "rgb") -> torch.Tensor:
    """The image [B, C, s, s] in (0, 1) that the parameter z stands for (differentiable). ``colour``
    "decorrelated" (3 channels, fourier only) mixes the channels before the sigmoid (see COLOURS)."""
    if kind == "pixel":
        return to_image(z)
    s = z.shape[-3]
    spec = torch.view_as_complex(z.float().contiguous()) * fourier_weights(s, decay).to(z.device)
    pre = torch.fft.irfft2(spec, s=(s, s), norm="ortho")  # [B, C, s, s]
    if colour == "decorrelated" and pre.shape[1] == 3:
        # components have unit variance; after mixing each RGB channel has about (0.38 / 0.47)^2 of it:
        # rescale so a unit-variance start is still a unit-variance image (lr and init_std keep their scale)
        m = colour_matrix().to(pre.device)
        pre = torch.einsum("ij,bjhw->bihw", m / m.norm(dim=1).mean(), pre)
    return torch.sigmoid(pre)


def upsample(kind: str, z: torch.Tensor, size: int, mode: str = "bicubic", decay: float = 1.0) -> torch.Tensor:
    """Carry z to the next stage size (pixel: interpolate the image; fourier: zero-pad the spectrum)."""
    if kind == "pixel":
        return upsample_param(z, size, mode)
    s = z.shape[-3]
    if size < s:
        raise ConfigError(f"cannot upsample a {s} x {s} parameter to {size} x {size}")
    with torch.no_grad():
        spec = z * fourier_weights(s, decay)[..., None].to(z.device)  # [B, C, s, s//2+1, 2]
        out = torch.zeros(*z.shape[:2], size, size // 2 + 1, 2, dtype=z.dtype, device=z.device)
        pos, neg = s // 2 + 1, (s - 1) // 2  # rows of non-negative and of negative frequencies
        out[:, :, :pos, :pos] = spec[:, :, :pos, :pos]
        if neg:
            out[:, :, size - neg:, :pos] = spec[:, :, s - neg:, :pos]
        # The orthonormal transform divides by the side length: keep pixel values by scaling up.
        return out * (size / s) / fourier_weights(size, decay)[..., None].to(z.device)
