"""CaG: generate images from an ordinary, fixed classifier (papers.md, section 2).

    >>> from egc.cag import load_classifier, resolve_class, generate, CaGConfig
    >>> clf = load_classifier("efficientnet-lite0")
    >>> imgs = generate(clf, resolve_class(clf, "goldfish"), 8, CaGConfig(size=128))  # [8, 3, 128, 128] in [0, 1]

Modules: ``masks`` (random masks and fills), ``schedule`` (progressive resolution), ``param`` (pixel or
Fourier image parameterisation), ``losses`` (class / diversity / distribution / batch-norm / TV terms),
``adapters`` (the Classifier interface and loaders), ``text`` (image-text models as classifiers),
``generate`` (the loop), ``cli`` (the ``egc cag`` subcommand).

Imports are eager: ``egc`` itself already imports torch, and a lazy ``generate`` attribute would be
shadowed by the submodule of the same name.
"""

from __future__ import annotations

from .adapters import (
    Classifier,
    EGCClassifier,
    ModuleClassifier,
    imagenet_class_names,
    load_classifier,
    logits_and_features,
    resolve_class,
    wrap_module,
)
from .generate import PARTS, CaGConfig, default_view, generate, plain_config, plain_gradient_ascent, without
from .losses import (
    BNStatsRecorder,
    bn_stats_loss,
    class_loss,
    distribution_loss,
    diversity_loss,
    feature_stats,
    total_variation,
)
from .masks import MASK_FAMILIES, MASK_FILLS, apply_mask, random_mask
from .param import PARAMS, fourier_weights, init_param, param_image, upsample
from .schedule import default_stages, resize, resolution_schedule, to_image, to_param, upsample_param
from .text import TextClassifier, load_text_classifier, prompt_classes, text_classifier_from_encoders

__all__ = [
    "BNStatsRecorder", "CaGConfig", "Classifier", "EGCClassifier", "MASK_FAMILIES", "MASK_FILLS", "ModuleClassifier", "PARAMS", "PARTS",
    "TextClassifier", "apply_mask", "bn_stats_loss", "class_loss", "default_stages", "default_view", "distribution_loss", "diversity_loss",
    "feature_stats", "fourier_weights", "generate", "imagenet_class_names", "load_classifier", "init_param", "load_text_classifier", "logits_and_features", "param_image",
    "plain_config", "plain_gradient_ascent", "prompt_classes", "random_mask", "resize", "resolution_schedule", "resolve_class",
    "text_classifier_from_encoders", "to_image", "to_param", "total_variation", "upsample", "upsample_param", "wrap_module", "without",
]
