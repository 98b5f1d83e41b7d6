"""The Inception-v3 network of the standard FID, in plain torch (no torchvision).

FID as everyone reports it (Heusel et al., 2017; TTUR, pytorch-fid, torch-fidelity) uses the
2048-d pool3 features of the TensorFlow Inception graph of 2015-12-05, not torchvision's
ImageNet Inception-v3. That graph differs from the textbook network in three places, which this
port reproduces:

* the pool branch of the 35x35, 17x17 and first 8x8 mixed blocks averages over the valid window
  only (``count_include_pad=False``, TensorFlow's "SAME" average pooling);
* the pool branch of the last mixed block (``Mixed_7c``) is a 3x3 *max* pool;
* the classifier has 1008 outputs.

The module's ``state_dict`` keys are those of ``pt_inception-2015-12-05-6726825d.pth``, the
conversion of that graph which pytorch-fid publishes as a GitHub release asset
(``Conv2d_1a_3x3.conv.weight``, ..., ``Mixed_7c.branch_pool.bn.running_var``, ``fc.weight``,
``fc.bias``). egc never downloads it: the user passes the file with ``egc eval --inception FILE``.

Input convention of :func:`inception_features`: images in the egc model range [-1, 1] (the
range of samples and of ``to_model_range``), 1 or 3 channels, any size. They are quantised to
8 bits (as when samples are saved as PNG and scored by pytorch-fid), resized bilinearly to
299 x 299 and fed to the network in [-1, 1], which is what the TensorFlow graph sees after its
own ``(x - 128) / 128`` of 0..255 pixels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from egc.errors import EgcError

#: The file this network's state dict must match (pytorch-fid's GitHub release asset).
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_HINT = f"expected {WEIGHTS_FILE} from pytorch-fid's GitHub releases (download it yourself)"
#: Side of the square input of the network.
INPUT_SIZE = 299
#: Size of the pool3 feature vector.
FEATURE_DIM = 2048
#: Metric keys: only numbers computed with these weights may be called FID.
FID_KEY = "fid_inception"
KID_KEY = "kid_inception"
KID_STD_KEY = "kid_std_inception"
_BN_COUNTER = "num_batches_tracked"


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as in the TF graph), ReLU.

    The children are called ``conv`` and ``bn`` so the keys read ``<block>.conv.weight``,
    ``<block>.bn.running_mean`` and so on.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool that, like TensorFlow's, ignores the zero padding at borders."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """35x35 mixed block (Mixed_5b/5c/5d): 1x1, 5x5, double 3x3 and pooled branches.
    Output channels: 64 + 64 + 96 + ``pool_features``."""

    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([a, b, c, d], dim=1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction (Mixed_6a): strided 3x3, strided double 3x3, max pool.
    Output channels: 384 + 96 + ``c_in``."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        c = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([a, b, c], dim=1)


class FIDInceptionC(nn.Module):
    """17x17 mixed block (Mixed_6b..6e) with factorised 7x7 convolutions (1x7 then 7x1).
    ``c7`` is the width inside the 7x7 branches; output channels: 4 x 192."""

    def __init__(self, c_in: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) of a 1x7 and a 7x1 conv
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, row[0], padding=row[1])
        self.branch7x7_3 = BasicConv2d(c7, 192, col[0], padding=col[1])
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, row[0], padding=row[1])
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, row[0], padding=row[1])
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = conv(c)
        d = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([a, b, c, d], dim=1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction (Mixed_7a). Output channels: 320 + 192 + ``c_in``."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        c = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([a, b, c], dim=1)


class _InceptionE(nn.Module):
    """8x8 mixed block with split 1x3 / 3x1 heads. Output channels: 320 + 768 + 768 + 192 = 2048.
    Subclasses choose the pool of the pool branch."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        s = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], dim=1)
        t = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(t), self.branch3x3dbl_3b(t)], dim=1)
        d = self.branch_pool(self._pool(x))
        return torch.cat([a, b, c, d], dim=1)


class FIDInceptionE_1(_InceptionE):  # noqa: N801 - the name the FID literature uses
    """Mixed_7b: average pool over the valid window in the pool branch."""

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return _tf_avg_pool(x)


class FIDInceptionE_2(_InceptionE):  # noqa: N801
    """Mixed_7c: the 2015 graph has a 3x3 max pool (not an average) in the pool branch."""

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3: ``forward(x [B, 3, 299, 299] in [-1, 1]) -> pool3 features [B, 2048]``.

    Randomly initialised; load weights with :func:`load_inception`. ``fc`` (1008 classes) is kept
    only so the state dict matches the weights file; FID does not use it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)  # 299 -> 149
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)  # -> 147
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        # max pool 3/2 -> 73
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)  # -> 71
        # max pool 3/2 -> 35
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)  # -> 256
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)  # -> 288
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)  # -> 288
        self.Mixed_6a = InceptionB(288)  # -> 768 x 17 x 17
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)  # -> 1280 x 8 x 8
        self.Mixed_7b = FIDInceptionE_1(1280)  # -> 2048
        self.Mixed_7c = FIDInceptionE_2(2048)
        self.fc = nn.Linear(FEATURE_DIM, 1008)
        self.source: dict[str, str] = {}  # {"file", "sha256"} once loaded from a file

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))  # global average pool: pool3, [B, 2048]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, 2048]`` pool3 features -> ``[B, 1008]`` class logits (not used by FID)."""
        return self.fc(features)


# ---------------------------------------------------------------------------------------- loading
def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_state_dict(sd: Mapping, net: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``sd`` that ``net`` loads; an EgcError naming the first bad key otherwise.

    BatchNorm's ``num_batches_tracked`` counters may be present or absent (eval mode never
    reads them); every other key must match ``net.state_dict()`` in name and shape.
    """
    want = {k: v.shape for k, v in net.state_dict().items() if not k.endswith(_BN_COUNTER)}
    counters = {k for k in net.state_dict() if k.endswith(_BN_COUNTER)}
    bad_type = next((k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad_type is not None:
        raise EgcError(f"{path}: not a state dict of tensors (entry {bad_type!r} is a {type(sd[bad_type]).__name__}); {WEIGHTS_HINT}")
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want and k not in counters]
    if missing or unexpected:
        first = f"missing key {missing[0]!r}" if missing else f"unexpected key {unexpected[0]!r}"
        raise EgcError(f"{path}: not the FID Inception-v3 weights: {first} ({len(missing)} missing, "
                       f"{len(unexpected)} unexpected of {len(want)}); {WEIGHTS_HINT}")
    for k, shape in want.items():
        if sd[k].shape != shape:
            raise EgcError(f"{path}: not the FID Inception-v3 weights: '{k}' has shape {list(sd[k].shape)}, "
                           f"expected {list(shape)}; {WEIGHTS_HINT}")
        if not sd[k].is_floating_point() or not bool(torch.isfinite(sd[k]).all()):
            raise EgcError(f"{path}: '{k}' is not finite floating point ({sd[k].dtype}); {WEIGHTS_HINT}")
    return {k: sd[k] for k in want}


def load_inception(path: str | Path, device: torch.device | str = "cpu") -> FIDInceptionV3:
    """The FID Inception-v3 with the weights in ``path``, in eval mode, without gradients.

    ``path`` is pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a plain torch state dict,
    read with ``weights_only=True``: nothing is unpickled beyond tensors). The returned module's
    ``source`` is ``{"file": name, "sha256": first 16 hex digits}`` for the record.

    Raises:
        EgcError: one line, when the file is missing, unreadable, not a torch state dict, or its
            keys / shapes are not those of the network (the message names the first bad key).
    """
    p = Path(path)
    if not p.is_file():
        raise EgcError(f"{p}: Inception weights file not found; {WEIGHTS_HINT}")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle/zip/unsupported-global errors all mean "not ours"
        # torch's own message is many lines of advice about weights_only; the type is enough here
        raise EgcError(f"{p}: not a torch state dict (torch.load with weights_only=True failed: {type(e).__name__}); "
                       f"{WEIGHTS_HINT}") from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise EgcError(f"{p}: not a torch state dict (holds a {type(sd).__name__}); {WEIGHTS_HINT}")
    net = FIDInceptionV3()
    tensors = _check_state_dict(sd, net, p)
    with torch.no_grad():
        net.load_state_dict(tensors, strict=False)  # strict on everything but the BN counters (checked above)
    net.source = {"file": p.name, "sha256": file_sha256(p)[:16]}
    net.requires_grad_(False)
    return net.eval().to(device)


# ---------------------------------------------------------------------------------------- features
def to_inception_input(images: torch.Tensor) -> torch.Tensor:
    """Model-range images ``[B, C, H, W]`` in [-1, 1] (C = 1 or 3) -> network input ``[B, 3, 299, 299]``.

    Quantises to 8 bits (round to the nearest of 256 levels, clamping sampler overshoot), repeats
    a grey channel three times, resizes bilinearly (``align_corners=False``, as pytorch-fid) and
    returns values in [-1, 1].
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3) or not images.is_floating_point():
        raise EgcError(f"Inception-v3 takes float [N, 1 or 3, H, W] images, got {images.dtype} {tuple(images.shape)}")
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 255.0  # [0, 1], 8-bit levels
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return x * 2 - 1


@torch.no_grad()
def inception_features(net: FIDInceptionV3, images: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
    """pool3 features of ``images`` (float ``[N, C, H, W]`` in [-1, 1], C = 1 or 3) ->
    float64 CPU ``[N, 2048]``, computed in batches on the network's device."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise EgcError(f"Inception-v3 features: expected [N, C, H, W] images with N >= 1, got {tuple(images.shape)}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.05 or hi > 1.05:  # uint8 or [0, 255] data would give garbage features
        raise EgcError(f"Inception-v3 features: images must be in [-1, 1], got range [{lo:.3g}, {hi:.3g}]")
    device = next(net.parameters()).device
    net.eval()
    out = [net(to_inception_input(images[i:i + batch_size].to(device))).to("cpu", torch.float64)
           for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out)


def inception_metrics(net: FIDInceptionV3, images: torch.Tensor, ref_images: torch.Tensor, *, batch_size: int = 50,
                      kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0) -> dict[str, float]:
    """``{"fid_inception", "kid_inception", "kid_std_inception"}`` of generated ``images`` against real
    ``ref_images`` (both float ``[N, C, H, W]`` in [-1, 1], N >= 2), with :mod:`egc.eval.fid`'s
    Frechet distance and KID on the pool3 features."""
    from .fid import frechet_distance_features, kid

    if images.shape[0] < 2 or ref_images.shape[0] < 2:
        raise EgcError("Inception-v3 FID needs at least 2 samples and 2 reference images")
    fake = inception_features(net, images, batch_size)
    real = inception_features(net, ref_images, batch_size)
    kid_mean, kid_std = kid(real, fake, subsets=kid_subsets, subset_size=min(kid_subset_size, fake.shape[0], real.shape[0]), seed=seed)
    # fewer images than 2048 dims (the usual case) avoids a 2048 x 2048 eigendecomposition; same value
    return {FID_KEY: frechet_distance_features(real, fake), KID_KEY: kid_mean, KID_STD_KEY: kid_std}
