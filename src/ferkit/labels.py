"""Canonical expression class names and their aliases.

One vocabulary for the whole toolkit: FER2013's folder names (``disgust``, ``fear``, ``surprise``)
and the reference implementation's (``disgusted``, ``fearful``, ``surprised``) map to the same
canonical names. Cheap to import (no numpy, no torch).
"""
from __future__ import annotations

from .errors import FerkitError

#: Every class ferkit knows, canonical spelling, in the default order.
EXPRESSIONS: tuple[str, ...] = (
    "angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral", "contempt",
)
#: The reference implementation's six classes, in its (alphabetical) index order.
REFERENCE_CLASSES: tuple[str, ...] = EXPRESSIONS[:6]

_ALIASES = {
    "anger": "angry", "angry": "angry", "mad": "angry",
    "disgust": "disgusted", "disgusted": "disgusted",
    "fear": "fearful", "fearful": "fearful", "afraid": "fearful", "scared": "fearful",
    "happiness": "happy", "happy": "happy", "joy": "happy",
    "sadness": "sad", "sad": "sad",
    "surprise": "surprised", "surprised": "surprised",
    "neutral": "neutral", "calm": "neutral",
    "contempt": "contempt",
}


def canonical_class(name: str) -> str | None:
    """Return the canonical name for ``name`` (case-insensitive alias lookup), or None."""
    return _ALIASES.get(name.strip().lower())


def parse_classes(spec: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Parse a ``--classes`` value ("angry,happy" or a list) into canonical names, in order.

    ``None`` gives the reference's six classes; ``"all7"`` the six plus neutral.
    Raises FerkitError on unknown or repeated names.
    """
    if spec is None:
        return REFERENCE_CLASSES
    if isinstance(spec, str):
        if spec.strip().lower() in ("all7", "fer2013"):
            return EXPRESSIONS[:7]
        spec = [s for s in spec.split(",") if s.strip()]
    out: list[str] = []
    for name in spec:
        canon = canonical_class(name)
        if canon is None:
            raise FerkitError(f"unknown class {name.strip()!r}; known: {', '.join(EXPRESSIONS)}")
        if canon in out:
            raise FerkitError(f"class {canon!r} is listed twice in --classes")
        out.append(canon)
    if not out:
        raise FerkitError("--classes is empty")
    return tuple(out)
