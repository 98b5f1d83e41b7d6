"""Class names and ids as users type them: one rule for the CLI, the web app and CaG."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from .errors import EgcError


def norm_name(name: str) -> str:
    """Case-insensitive, with "_" read as a space ("ankle_boot" is "Ankle boot")."""
    return " ".join(str(name).replace("_", " ").lower().split())


def class_index(names: Sequence[str], spec: str | int, owner: str) -> int:
    """The index of class ``spec`` (an id, as int or digit string, or a name) among ``names``.

    EgcError (one line) for an id out of range or an unknown name, naming ``owner`` ("model zoo:x"), the
    classes when there are at most 20, and the closest names."""
    k = len(names)
    if isinstance(spec, bool):
        raise EgcError(f"unknown class {spec!r} for {owner}")
    if isinstance(spec, int) or str(spec).strip().lstrip("-").isdigit():
        i = int(spec)
        if not 0 <= i < k:
            raise EgcError(f"class id {i} out of range: {owner} has classes 0..{k - 1}")
        return i
    want = norm_name(str(spec))
    normed = [norm_name(n) for n in names]
    if want in normed:
        return normed.index(want)
    close = difflib.get_close_matches(want, normed, n=3, cutoff=0.6) if want else []
    hint = f"; did you mean {', '.join(repr(names[normed.index(c)]) for c in close)}?" if close else ""
    shown = f" (classes: {', '.join(map(str, names))})" if k <= 20 else ""
    raise EgcError(f"unknown class {str(spec)!r} for {owner}{shown}{hint}")
