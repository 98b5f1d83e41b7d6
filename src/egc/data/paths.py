"""Where data sets are looked for: an explicit root, then ``$EGC_DATA``, then built-in defaults."""

from __future__ import annotations

import os
from pathlib import Path

ENV_DATA = "EGC_DATA"
ENV_CACHE = "EGC_CACHE"


def search_dirs(name: str, root: str | os.PathLike[str] | None, defaults: list[Path]) -> list[Path]:
    """Candidate directories for data set ``name``, most specific first.

    An explicit ``root`` is authoritative: when given, only ``root`` and ``root/<name>`` are
    searched, so a typo in ``--data-root`` is reported instead of silently falling back to some
    other copy. Without it: ``$EGC_DATA``, ``$EGC_DATA/<name>``, then ``defaults``.
    """
    if root is not None:
        base = Path(root).expanduser()
        return [base, base / name]
    dirs: list[Path] = []
    env = os.environ.get(ENV_DATA)
    if env:
        base = Path(env).expanduser()
        dirs += [base, base / name]
    return dirs + defaults


def find_upwards(relative: str) -> list[Path]:
    """Existing files ``<ancestor>/<relative>`` for ancestors of the cwd and of this package.

    Checkouts sit beside a read-only ``shared/`` folder (``<repo>/../shared/data``), and both the
    cwd (a script run from the repo) and the package location (an editable install run from
    elsewhere) are ways to find that repo.
    """
    found: list[Path] = []
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for ancestor in (start, *start.parents):
            candidate = ancestor / relative
            if candidate.is_file() and candidate not in found:
                found.append(candidate)
    return found


def cache_dir() -> Path:
    """``$EGC_CACHE`` or ``~/.cache/egc``: where decoded arrays are kept between runs."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "egc"


def describe(paths: list[Path]) -> str:
    """A short, de-duplicated list of paths for an error message."""
    seen: list[str] = []
    for p in paths:
        if str(p) not in seen:
            seen.append(str(p))
    return ", ".join(seen)
