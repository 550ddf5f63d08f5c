"""Writing outputs safely: atomic files, checked output folders, figures.

Every file ferkit writes goes to a temporary sibling first and is renamed into place, so an
interrupted command never leaves a half-written file under the final name.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import FerkitError

TMP_SUFFIX = ".tmp"
#: The lock file of an output that a ferkit command is writing (see :func:`output_lock`).
LOCK_NAME = ".ferkit.lock"


def temp_sibling(path: Path) -> Path:
    """The temporary name :func:`atomic_path` writes ``path`` under (hidden, ends in .tmp):
    ``.<name>.<pid>.ferkit.tmp``, so a later run knows whose it was (:func:`remove_stale_temps`)."""
    return path.with_name(f".{path.name}.{os.getpid()}.ferkit{TMP_SUFFIX}")


_STALE_FILE = re.compile(r"^\..+\.(\d+)\.ferkit\.tmp$")
_cleaned: set[str] = set()


def pid_alive(pid: int) -> bool:
    """Is process ``pid`` running (on this machine)? Unknown counts as running."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:            # e.g. another user's process
        return True
    return True


def remove_stale_temps(folder, dataset: str | None = None) -> list[str]:
    """Remove what killed ferkit runs left in ``folder``: temporary files of :func:`atomic_path`
    whose process is gone, and, with ``dataset``, the hidden ``.<dataset>.tmp-*`` folders of a
    dataset build (:class:`ferkit.synth.writer.AtomicDataset`) whose process is gone (older ones
    without a process id once an hour has passed). Returns the names removed (and says so)."""
    import shutil
    import time

    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        try:
            m = _STALE_FILE.match(e.name)
            if m and not pid_alive(int(m.group(1))) and e.is_file(follow_symlinks=False):
                os.unlink(e.path)
                removed.append(e.name)
            elif dataset and e.name.startswith(f".{dataset}.tmp-") and e.is_dir(follow_symlinks=False):
                m = re.match(r"(\d+)-", e.name[len(dataset) + 6:])
                stale = not pid_alive(int(m.group(1))) if m else time.time() - e.stat().st_mtime > 3600
                if stale:
                    shutil.rmtree(e.path)
                    removed.append(e.name + "/")
        except OSError:
            continue
    if removed:
        from .console import log

        shown = ", ".join(removed[:3]) + (" ..." if len(removed) > 3 else "")
        log(f"note: removed {len(removed)} temporary file(s) left in {folder} by a ferkit run that was killed: {shown}")
    return removed


def _remove_stale_temps_once(folder: Path) -> None:
    key = os.path.abspath(folder)
    if key not in _cleaned:
        _cleaned.add(key)
        remove_stale_temps(folder)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    On an exception the temporary file is removed and ``path`` is left as it was. A full disk, a
    read-only folder or a permission error becomes one FerkitError naming ``path``.
    """
    path = Path(path)
    tmp = temp_sibling(path)
    _remove_stale_temps_once(path.parent)   # once per folder and process: what killed runs left there
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
    """Atomically write a safetensors file; its own error type becomes a FerkitError.

    The file is serialised in memory and written through :func:`atomic_path` like every other
    output: ``safetensors.torch.save_file`` (0.8) writes through a temporary file of its own
    (``.tmpXXXXXX``, Rust's tempfile crate) that a kill leaves behind under a name ferkit cannot
    tell from a user's file."""
    from safetensors.torch import save

    path = Path(path)
    try:
        data = save(tensors, metadata=metadata)
    except Exception as exc:  # safetensors' SafetensorError
        raise FerkitError(f"cannot write {path}: {str(exc).splitlines()[0][:120]}") from None
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def current_umask() -> int:
    """The process's umask (read without changing it where Linux shows it, else set and restored)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


# ----------------------------------------------------------------------------- inputs and outputs
def _resolved(path) -> Path:
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def refuse_non_regular(path, what: str = "file") -> None:
    """One line for a path that exists but is not a regular file or folder (a FIFO, socket or
    device): opening one can block forever (a FIFO waits for a writer), so it is never opened."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return                                  # missing or unreadable: the caller says which
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise FerkitError(f"{what} {path} is not a regular file (a FIFO, socket or device); not read")


def is_within(path, folder) -> bool:
    """Is ``path`` the same as ``folder`` or inside it (symlinks resolved)?"""
    p, f = _resolved(path), _resolved(folder)
    return p == f or f in p.parents


def refuse_output_over_input(out, inputs, out_option: str = "--out", input_option: str = "input",
                             replaces: bool = False) -> None:
    """One line when an output would overwrite or land inside one of ``inputs`` (a file or a folder
    the command reads): the same path, an output inside an input folder (its files would be read as
    data next time), or, when the output folder is replaced as a whole (``replaces``), an input
    inside it."""
    for item in inputs:
        if item is None:
            continue
        if _resolved(out) == _resolved(item):
            raise FerkitError(f"{out_option} {out} is the {input_option} {item}: writing it would overwrite what "
                              "this command reads; choose another output")
        if Path(item).is_dir() and is_within(out, item):
            raise FerkitError(f"{out_option} {out} is inside the {input_option} {item}: its files would be mixed "
                              "into that data; choose an output outside it")
        if replaces and Path(out).is_dir() and is_within(item, out):
            raise FerkitError(f"the {input_option} {item} is inside {out_option} {out}, which this command "
                              "replaces; choose another output")


def same_path(a, b) -> bool:
    """Do two paths name the same file or folder (symlinks and ``..`` resolved)?"""
    return a is not None and b is not None and _resolved(a) == _resolved(b)


# ----------------------------------------------------------------------------- CSV
#: A spreadsheet reads a cell starting with one of these as a formula (OWASP, "CSV injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.IGNORECASE)


def csv_cell(value):
    """A CSV cell made safe to open in a spreadsheet: a text cell that starts with ``= + - @``, a tab
    or a carriage return gets a leading ``'`` (OWASP's rule), unless the text is a plain number such
    as ``-0.5`` or ``+1e-3``; numbers and everything else are kept as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_uncell(value: str) -> str:
    """The text :func:`csv_cell` escaped, for readers of ferkit's own CSVs (e.g. group names)."""
    if isinstance(value, str) and value[:1] == "'" and value[1:].startswith(FORMULA_START) \
            and not _PLAIN_NUMBER.fullmatch(value[1:]):
        return value[1:]
    return value


class _SafeRows:
    """A ``csv.writer`` whose text cells pass through :func:`csv_cell`."""

    def __init__(self, writer):
        self._w = writer

    def writerow(self, row):
        return self._w.writerow([csv_cell(v) for v in row])

    def writerows(self, rows):
        for row in rows:
            self.writerow(row)

    @property
    def dialect(self):
        return self._w.dialect


def csv_writer(fh, *args, **kwargs):
    """``csv.writer`` for files ferkit writes: every text cell escaped with :func:`csv_cell`."""
    return _SafeRows(csv.writer(fh, *args, **kwargs))


class CsvDictWriter(csv.DictWriter):
    """``csv.DictWriter`` for files ferkit writes: every text cell escaped with :func:`csv_cell`."""

    def __init__(self, fh, fieldnames, *args, **kwargs):
        super().__init__(fh, fieldnames, *args, **kwargs)
        self.writer = _SafeRows(self.writer)


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes (hex): ties an export to the exact checkpoint it was made from."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """ferkit's cache folder (decoded datasets, crash reports, matplotlib's files when home is read-only):
    $FERKIT_CACHE, else $XDG_CACHE_HOME/ferkit, else ~/.cache/ferkit."""
    env = os.environ.get("FERKIT_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ferkit"


def prepare_matplotlib() -> None:
    """Before matplotlib is imported: a writable config/cache folder (else matplotlib warns on every
    run, in two lines, and rebuilds its font cache each time) and its log kept to errors (no "building
    the font cache" line); the user's own MPLCONFIGDIR or logging level is kept when it works."""
    import logging

    logger = logging.getLogger("matplotlib")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)
    if "matplotlib" in sys.modules:
        return
    home = Path.home()
    given = os.environ.get("MPLCONFIGDIR")
    if given:
        ok = _writable_dir(Path(given))
    else:
        config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "matplotlib"
        cache = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "matplotlib"
        ok = _writable_dir(config) and _writable_dir(cache)
    if ok:
        return
    import tempfile

    for folder in (cache_dir() / "matplotlib", Path(tempfile.gettempdir()) / f"ferkit-matplotlib-{os.getuid()}"):
        if _writable_dir(folder):
            os.environ["MPLCONFIGDIR"] = str(folder)
            return


def new_figure(**kwargs):
    """A matplotlib Figure on a non-interactive canvas, without pyplot: nothing changes a notebook
    user's backend and nothing needs closing."""
    prepare_matplotlib()
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


class OutputLock:
    """An exclusive lock on an output (a run folder, a dataset, a predictions file) while a command
    writes it: a second ferkit process on the same output stops with one line instead of mixing
    its files into the first one's.

    The lock is an OS advisory lock (``flock``) on ``LOCK_NAME`` inside a folder, or on a hidden
    ``.<name>.lock`` beside a file. The OS releases it when its process dies, so a lock left by a
    killed process is simply taken over. A lock file inside a run folder stays; one beside an output,
    or inside a folder locked with ``tidy`` (predict's output folder), is removed on release, so the
    output holds only what the command wrote. Such a lock checks, once it holds the file, that the
    file is still the one under the name (a holder may have removed it meanwhile) and otherwise
    locks again.
    """

    def __init__(self, target: str | os.PathLike, what: str = "output", beside: bool = False, wait: bool = False,
                 tidy: bool = False):
        target = Path(target)
        self.wait = wait   # block until the holder is done instead of stopping (for short, shared steps)
        inside = target.is_dir() and not beside   # beside: for a folder that is replaced whole when done
        self.path = target / LOCK_NAME if inside else target.with_name(f".{target.name}.lock")
        self.target, self.what, self._fh = target, what, None
        # tidy: the lock file inside the folder is removed on release too (predict's output folder);
        # acquire then checks that the file it locked is still the one under the name
        self.tidy = tidy or not inside

    def acquire(self) -> OutputLock:
        import fcntl

        while True:
            try:
                fh = open(self.path, "a+")
            except OSError as exc:
                raise FerkitError(f"cannot lock {self.what} {self.target}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fh, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                fh.close()
                raise FerkitError(f"{self.what} {self.target} is being written by another ferkit process ({holder}); "
                                  "wait for it to finish, or choose another output") from None
            if not self.tidy or self._still_named(fh):
                break
            fh.close()        # its holder removed the file as we locked it: lock the one under the name now
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            if self.tidy:     # a lock beside an output (or a tidy one) leaves nothing behind
                self.path.unlink(missing_ok=True)
            self._fh.close()          # closing the file releases the flock
            self._fh = None

    def _still_named(self, fh) -> bool:
        try:
            return os.path.samestat(os.fstat(fh.fileno()), os.stat(self.path))
        except OSError:
            return False

    def __enter__(self) -> OutputLock:
        return self.acquire() if self._fh is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def output_lock(target: str | os.PathLike, what: str = "output", beside: bool = False,
                wait: bool = False, tidy: bool = False) -> OutputLock:
    """``with output_lock(path):`` hold :class:`OutputLock` on ``path`` (a folder or a file); ``wait``
    blocks until another holder releases it instead of stopping with one line; ``tidy`` removes the
    lock file inside a folder on release (an output folder that is not a run folder)."""
    return OutputLock(target, what, beside, wait, tidy)
