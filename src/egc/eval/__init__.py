"""Evaluation: an independent judge network and sample-quality metrics in its feature space;
calibration, adversarial attacks and OOD AUROC (``egc eval`` / ``egc report``: evaluate.py, the runner, with
one module per metric group; report.py, cli.py).

Metric names always carry the judge's name (``fd_fashioncnn``, ``kid_fashioncnn``, ...): a
Frechet distance in one network's feature space is not comparable to one in another's.
"""

from egc.eval.attacks import pgd, robust_accuracy_curve, square_linf
from egc.eval.calibration import expected_calibration_error, reliability_bins, reliability_diagram_png
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
from egc.eval.ood import auroc

__all__ = [
    "auroc",
    "expected_calibration_error",
    "pgd",
    "reliability_bins",
    "reliability_diagram_png",
    "robust_accuracy_curve",
    "square_linf",
    "FeatureCNN",
    "Judge",
    "extract_features",
    "frechet_distance",
    "gaussian_stats",
    "judge_samples",
    "kid",
    "load_feature_net",
    "load_judge",
    "metric_name",
    "precision_recall",
    "save_feature_net",
]
