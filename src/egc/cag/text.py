"""Text-to-image with CaG: an image-text model read as a "generalised classifier".

The paper's observation (papers.md, section 2): in CLIP-like models the normalised text embeddings
of a set of prompts are exactly the weights of a cosine-similarity last layer over the image
embedding. :class:`TextClassifier` builds that layer, so the CaG loop generates from a prompt with
no change: target class 0 = the prompt, the other classes (optional) are contrast prompts that the
cross-entropy pushes away from.

    logits[b, k] = scale * <e(x_b) / |e(x_b)|, t_k / |t_k|>        (scale = 1 / temperature)

Weights are never downloaded: :func:`load_text_classifier` takes ``clip:ARCH:PATH`` with a local
open_clip checkpoint file; open_clip itself (``pip install open_clip_torch``) is optional.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as tfn
from torch import nn

from ..errors import EgcError
from .adapters import check_images

#: Mean and std of the OpenAI CLIP image preprocessing (applied to [0, 1] pixels).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Contrast prompts used when a single prompt is given, so the cross-entropy has something to
#: push the image away from (with one class its softmax is always 1 and the loss is flat).
DEFAULT_CONTRAST = ("a blurry image", "random noise", "a plain grey texture")


class TextClassifier(nn.Module):
    """Image encoder + text embeddings as last-layer weights: [0, 1] images [B, C, S, S] -> [B, K].

    ``image_encoder`` maps normalised images to embeddings [B, D]; ``text_embeddings`` [K, D] are
    the prompts' embeddings (normalised here); ``class_names`` are the K prompts.
    """

    def __init__(self, image_encoder: nn.Module, text_embeddings: torch.Tensor, class_names: Sequence[str], input_size: int | None,
                 channels: int = 3, temperature: float = 0.01, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 name: str = "text") -> None:
        super().__init__()
        if text_embeddings.dim() != 2 or text_embeddings.shape[0] != len(class_names):
            raise EgcError(f"text embeddings of shape {tuple(text_embeddings.shape)} do not fit {len(class_names)} prompts")
        if temperature <= 0:
            raise EgcError(f"temperature must be > 0, got {temperature}")
        self.encoder = image_encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.register_buffer("weight", tfn.normalize(text_embeddings.detach().float(), dim=1), persistent=False)
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)
        self.scale = 1.0 / temperature
        self.class_names = list(class_names)
        self.input_size = input_size
        self.preferred_size = input_size or 64
        self.channels = channels
        self.name = name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, K], normalised image embedding [B, D]) for x [B, C, S, S] in [0, 1]."""
        check_images(self, x)
        emb = tfn.normalize(self.encoder((x - self.mean) / self.std).float(), dim=1)  # [B, D]
        return self.scale * emb @ self.weight.T, emb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[1]


def prompt_classes(prompt: str, contrast: Sequence[str] | None = DEFAULT_CONTRAST) -> list[str]:
    """[prompt, *contrast]: class 0 is the target. Empty prompts are an error."""
    p = prompt.strip()
    if not p:
        raise EgcError("the text prompt is empty")
    return [p] + [c for c in (contrast or ()) if c.strip().lower() != p.lower()]


def text_classifier_from_encoders(image_encoder: nn.Module, encode_text: Callable[[list[str]], torch.Tensor], prompts: Sequence[str],
                                  input_size: int | None, **kw: object) -> TextClassifier:
    """Build a :class:`TextClassifier` by embedding ``prompts`` with ``encode_text`` (list -> [K, D])."""
    with torch.no_grad():
        emb = encode_text(list(prompts))
    return TextClassifier(image_encoder, emb, prompts, input_size, **kw)  # type: ignore[arg-type]


def load_text_classifier(spec: str, prompts: Sequence[str], temperature: float | None = None) -> TextClassifier:
    """``clip:ARCH:PATH`` -> a TextClassifier over ``prompts`` from a local open_clip checkpoint.

    ARCH is an open_clip architecture name (e.g. ViT-B-32), PATH a weights file on disk. Nothing
    is downloaded: a missing file is an error before open_clip is asked, and the Hugging Face hub is
    switched to offline mode while loading. The temperature defaults to the model's learned one.
    """
    parts = spec.split(":", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise EgcError(f"text classifier must be clip:ARCH:WEIGHTS_PATH, got '{spec}'")
    arch, path = parts[1], Path(parts[2])
    if not path.is_file():
        raise EgcError(f"open_clip weights file not found: {path} (weights are never downloaded; give a local file)")
    try:
        import open_clip  # type: ignore[import-not-found]
    except ImportError:
        raise EgcError("text classifier clip:... needs open_clip: pip install open_clip_torch") from None
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        model = open_clip.create_model(arch, pretrained=str(path), device="cpu", pretrained_image=False)
        tokenizer = open_clip.get_tokenizer(arch)
    except Exception as e:  # unknown arch, weights that do not fit, a tokenizer that needs the hub
        raise EgcError(f"cannot load open_clip {arch} from {path}: {type(e).__name__}: {str(e).splitlines()[0][:120]}") from None
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old
    model.eval()
    size = getattr(model.visual, "image_size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean, std = tuple(cfg.get("mean", CLIP_MEAN)), tuple(cfg.get("std", CLIP_STD))
    temp = temperature if temperature is not None else float(1.0 / model.logit_scale.exp())

    class _Image(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.clip.encode_image(x)

    return text_classifier_from_encoders(_Image(), lambda ps: model.encode_text(tokenizer(ps)), prompts, size,
                                         temperature=temp, mean=mean, std=std, name=f"clip:{arch}")
