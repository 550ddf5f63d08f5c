"""Writing outputs safely: atomic files, checked output folders, figures.

Every file ferkit writes goes to a temporary sibling first and is renamed into place, so an
interrupted command never leaves a half-written file under the final name.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import FerkitError

TMP_SUFFIX = ".tmp"


def temp_sibling(path: Path) -> Path:
    """The temporary name :func:`atomic_path` writes ``path`` under (hidden, ends in .tmp)."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    On an exception the temporary file is removed and ``path`` is left as it was. A full disk, a
    read-only folder or a permission error becomes one FerkitError naming ``path``.
    """
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise FerkitError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Atomically write a safetensors file; its own error type (e.g. a full disk) becomes a FerkitError."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except OSError:
            raise
        except Exception as exc:  # safetensors' SafetensorError wraps the OS error in its message
            text = str(exc)
            full = "StorageFull" in text or "No space" in text
            why = "no space left on device" if full else text.splitlines()[0][:120]
            raise FerkitError(f"cannot write {path}: {why}") from None
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: str | os.PathLike):
    """Read a JSON file ferkit wrote; FerkitError (one line) when it is unreadable or damaged."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise FerkitError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise FerkitError(f"{path} is damaged (not valid JSON); pass --overwrite to start over") from None


def new_figure(**kwargs):
    """A matplotlib Figure on a non-interactive canvas, without pyplot: nothing changes a notebook
    user's backend and nothing needs closing."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure atomically (format from the suffix: .png, .jpg, .pdf ...)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower().replace("jpg", "jpeg") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt)
    return path


def make_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``path`` (and parents) and check it is a writable folder; FerkitError otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FerkitError(f"{what} {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FerkitError(f"cannot create {what} {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise FerkitError(f"{what} {path} is not writable")
    return path
