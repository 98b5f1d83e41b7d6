"""``egc eval``: every metric of one checkpoint, as one JSON document (schema ``egc-eval/1``).

This is the runner: ``run_eval`` loads the model (an :class:`egc.model.EGC`) and the test images, asks
the model what it can do, records why each requested metric that does not apply is skipped, and runs
the others, one module per metric group:

    accuracy.py              acc (or cluster purity), ece, noisy_acc
    robustness.py            robust (PGD curves and sanity checks; the attacks are in attacks.py)
    ood.py                   ood (energy and MSP AUROC against noise and other data sets)
    generation.py            gen (samples judged by an independent network, Inception, naturalness)
    diffusion_classifier.py  dc (opt-in)

with the model glue in modelio.py, the test images in testsets.py and the settings in settings.py.
Images are float ``[N, C, H, W]`` in the model range [-1, 1] unless a name says ``x01`` (pixel scale
[0, 1], which the attacks use so that eps budgets are the usual ones).
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from egc.errors import EgcError

# The names other modules, scripts and tests import from here (their homes are the modules above).
from .accuracy import accuracy_and_calibration, cluster_purity, noisy_accuracy
from .diffusion_classifier import diffusion_classifier_metric
from .generation import DEFAULT_JUDGES, INCEPTION_NOT_GIVEN, generation, generation_metrics, load_inception_flag, resolve_judge, sample_grid_u8
from .modelio import batched_logits, energy_scores, model_logits_fn, noise_schedule_abar
from .ood import OOD_DATASETS, OOD_NOISE, ood_sets, out_of_distribution
from .robustness import robustness
from .settings import CLASSIFY_METRICS, METRICS, OPT_IN_METRICS, SCHEMA, EvalContext, EvalSettings, parse_metrics
from .testsets import load_test_set, norm_name

if TYPE_CHECKING:
    from egc.config import RunConfig
    from egc.model import EGC

__all__ = [
    "CLASSIFY_METRICS", "DEFAULT_JUDGES", "INCEPTION_NOT_GIVEN", "METRICS", "OOD_DATASETS", "OOD_NOISE", "OPT_IN_METRICS", "SCHEMA",
    "EvalContext", "EvalSettings", "batched_logits", "cluster_purity", "energy_scores", "generation_metrics", "load_inception_flag",
    "load_test_set", "model_logits_fn", "noise_schedule_abar", "noisy_accuracy", "norm_name", "ood_sets", "parse_metrics",
    "resolve_judge", "run_eval", "sample_grid_u8",
]


def _clean(v: Any) -> Any:
    """NaN / inf -> None, floats to 6 significant digits, tuples -> lists, recursively: the JSON stays standard."""
    if isinstance(v, float):
        return float(f"{v:.6g}") if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, torch.Tensor):
        return _clean(v.tolist())
    return v


def _check_settings(cfg: RunConfig, s: EvalSettings) -> None:
    if any(t < 0 or t >= cfg.diffusion.steps for t in s.noise_t):
        raise EgcError(f"--noise-t values must be in [0, {cfg.diffusion.steps - 1}], got {','.join(map(str, s.noise_t))}")
    if s.ood_sets is not None:
        bad = [n for n in s.ood_sets if n not in (*OOD_NOISE, *OOD_DATASETS)]
        if bad:
            raise EgcError(f"--ood-sets: unknown set '{bad[0]}' (choose from {', '.join((*OOD_NOISE, *OOD_DATASETS))})")


def _skip_reason(c: EvalContext, name: str, labelled: bool) -> str | None:
    """Why metric ``name`` does not apply to this model or data (asked of the model), or None."""
    m, kind = c.m, c.m.kind
    why = None
    if name in CLASSIFY_METRICS and not m.can_classify:
        why = f"a {kind} model does not classify"
    elif name in ("ece", "noisy_acc", "robust") and not m.supervised:
        why = "an unsupervised model's classes are clusters, not labels (see cluster_purity)"
    elif name in ("acc", "ece", "noisy_acc", "robust") and not labelled:
        why = f"the test images of {c.data_name} have no labels"
    if name == "gen" and not m.can_generate:
        why = f"a {kind} model does not generate"
    if name == "dc" and not (m.conditional and m.kind_info.sampler == "diffusion"):
        why = f"the diffusion classifier needs a class-conditional diffusion model; this is a {kind} model"
    return why


def _skips(c: EvalContext) -> None:
    """Why each requested metric that does not apply to this model or data is skipped."""
    labelled = bool(c.y.numel()) and bool((c.y >= 0).all())
    for name in c.s.metrics:
        why = _skip_reason(c, name, labelled)
        if why is not None:
            c.skipped[name] = why


def _run_metrics(c: EvalContext, inception: Any) -> None:
    """Every requested metric that applies, in the document's order."""
    accuracy_and_calibration(c)
    if c.wants("robust"):
        robustness(c)
    if c.wants("ood"):
        out_of_distribution(c)
    if c.wants("gen"):
        generation(c, inception)
    if c.wants("dc"):
        diffusion_classifier_metric(c)


def _document(c: EvalContext, n_full: int) -> dict[str, Any]:
    """The ``egc-eval/1`` document of a finished run (before :func:`_clean`)."""
    from egc.host import cpu_name

    settings = asdict(c.s)
    settings.update(data=c.data_name, torch=torch.__version__, threads=torch.get_num_threads(), python=platform.python_version(), cpu=cpu_name(),
                    precision=c.m.precision)
    ckpt_file = None
    with contextlib.suppress(Exception):
        from egc.checkpoint import resolve

        ckpt_file = str(resolve(c.checkpoint))
    return {
        "schema": SCHEMA,
        "checkpoint": str(c.checkpoint),
        "checkpoint_file": ckpt_file,
        "kind": c.m.kind,
        "data": c.data_name,
        "n_test": int(c.x.shape[0]),
        "test_split": c.split_note,
        "n_test_full": n_full,
        "metrics": c.metrics,
        "skipped": c.skipped,
        "artifacts": c.artifacts,
        "wall_time_s": {k2: round(v, 3) for k2, v in c.wall.items()},
        "settings": settings,
    }


def run_eval(checkpoint: str, s: EvalSettings, model: EGC | None = None) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (or ``model``, already loaded from it) and return the ``egc-eval/1``
    document; PNGs go to ``s.out_dir`` when set."""
    t_start = time.perf_counter()
    inception = load_inception_flag(s.inception)  # before the model: a bad file fails at once
    if model is None:
        from egc.model import EGC

        model = EGC.load(checkpoint, precision=s.precision, device=s.device)
    m = model
    data_name = s.data or m.config.data.name
    _check_settings(m.config, s)
    tick = time.perf_counter()
    x, y, n_full, split_note = load_test_set(m, data_name, s.data_root, s.n_test, s.seed)
    c = EvalContext(m, s, checkpoint, data_name, x, y, Path(s.out_dir) if s.out_dir else None, split_note)
    c.wall["load"] = time.perf_counter() - tick
    _skips(c)
    _run_metrics(c, inception)
    c.wall["total"] = time.perf_counter() - t_start
    return _clean(_document(c, n_full))
