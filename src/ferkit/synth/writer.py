"""One atomic dataset writer for every generator: class folders of PNG faces plus metadata.csv.

A dataset is built in a hidden temporary folder beside ``out_dir`` and renamed into place only
when complete, so an interrupted or failed generator (Ctrl-C, a full disk) never leaves a
half-written dataset behind. The layout is ImageFolder's (``out_dir/<class>/<file>.png``), so
``ferkit train``, ``mix`` and ``study`` read any generator's output unchanged.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import FerkitError
from ..files import CsvDictWriter, current_umask, remove_stale_temps


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Fail early, with one line, on anything that would make the final rename fail."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FerkitError(f"output path {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FerkitError(f"output directory {out_dir} is not empty (pass overwrite=True / --overwrite)")
        if not ((out_dir / "metadata.csv").exists() or any(out_dir.glob("*/metadata.csv"))):
            # --overwrite deletes the old directory; only ever do that to a dataset we made
            raise FerkitError(f"refusing to overwrite {out_dir}: it does not look like a ferkit synth dataset")
    parent = out_dir.parent
    for anc in [parent, *parent.parents]:
        if anc.exists():
            if not anc.is_dir():
                raise FerkitError(f"cannot create {out_dir}: {anc} is a file")
            if not os.access(anc, os.W_OK | os.X_OK):
                raise FerkitError(f"cannot write to {anc}: permission denied")
            break


class AtomicDataset:
    """``with AtomicDataset(out_dir) as tmp:`` build the dataset in ``tmp``; on success it replaces
    ``out_dir``, on any failure it is removed (an OS error becomes one FerkitError line)."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)

    def __enter__(self) -> Path:
        from ..files import output_lock

        try:
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FerkitError(f"cannot write to {self.out_dir.parent}: {e.strerror or e}") from None
        # beside the folder, which is replaced whole: a second writer of the same dataset stops in one line
        self.lock = output_lock(self.out_dir, "dataset", beside=True).acquire()
        try:
            remove_stale_temps(self.out_dir.parent, dataset=self.out_dir.name)   # left by a killed build
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.tmp-{os.getpid()}-",
                                             dir=self.out_dir.parent))
            os.chmod(self.tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700; the dataset should not be
        except OSError as e:
            self.lock.release()
            raise FerkitError(f"cannot write to {self.out_dir.parent}: {e.strerror or e}") from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        try:
            return self._finish(exc_type, exc)
        finally:
            self.lock.release()

    def _finish(self, exc_type, exc):
        if exc_type is None:
            try:
                if self.out_dir.exists():
                    shutil.rmtree(self.out_dir)
                os.replace(self.tmp, self.out_dir)
                return False
            except OSError as e:
                exc = e
        shutil.rmtree(self.tmp, ignore_errors=True)
        if isinstance(exc, OSError):  # full disk, permissions: one line, nothing half-written left behind
            raise FerkitError(f"cannot write {self.out_dir}: {exc.strerror or exc} (nothing was written)") from None
        return False


def write_png(path: Path, img: np.ndarray) -> None:
    """One face (gray, or BGR as OpenCV writes it). PNG level 1: ~15% bigger files than level 9,
    several times faster to write."""
    import cv2

    if not cv2.imwrite(str(path), img, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise OSError(f"could not write {path}")


def write_metadata(path: Path, rows: list[dict], columns) -> None:
    """metadata.csv: one row per file, ``file`` (relative path) and ``class`` first."""
    with open(path, "w", newline="") as f:
        w = CsvDictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)
