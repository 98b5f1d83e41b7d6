"""egc: energy-based generative classifiers and classifiers as generators."""

__version__ = "0.1.0"

from .model import EGC  # noqa: E402

__all__ = ["EGC", "__version__"]
