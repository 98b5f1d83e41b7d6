"""``egc serve``: a local web app to see a generative classifier work (classify, generate, CaG).

    >>> from egc.serve import create_app
    >>> app = create_app(["zoo:fashion-mnist"])       # a Starlette (ASGI) app; run it with uvicorn

Modules: ``service`` (models, limits, the calls into the Python API; no web code), ``jobs`` (the
one-at-a-time queue of heavy jobs with cancellation), ``app`` (the Starlette routes and the event
streams), ``cli`` (the ``egc serve`` subcommand), ``static/`` (the page: one HTML, one JS, one CSS).
The server adds no model logic: it validates requests, calls ``EGC`` and ``egc.cag``, and encodes PNGs.
"""

from __future__ import annotations


def create_app(specs: list[str] | None = None, device: str = "auto", precision: str = "auto"):  # noqa: ANN201 - Starlette is imported lazily
    """The web app for the models ``specs`` (zoo:NAME, run folders, checkpoint files; default the
    shipped zoo:fashion-mnist), loaded onto ``device``. Raises EgcError for a model that cannot load."""
    from .app import build_app
    from .service import Service

    return build_app(Service(specs or ["zoo:fashion-mnist"], device=device, precision=precision))
