"""What ferkit says while it works: notes on stderr, and progress bars only where someone watches.

Progress bars draw only on a terminal; when stderr goes to a file or a pipe (a log, CI, ``nohup``)
they are off and long runs print plain per-epoch lines instead, so logs stay small and readable.
"""
from __future__ import annotations

import sys


def log(message: str) -> None:
    """Progress and notes go to stderr, so stdout stays parseable (e.g. ``accuracy: ...``)."""
    print(message, file=sys.stderr, flush=True)


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """A tqdm bar on stderr, disabled unless ``enabled`` and stderr is a terminal."""
    from tqdm import tqdm

    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not (enabled and tty) or kwargs.pop("disable", False), **kwargs)
