"""What a command does when something goes wrong that is not the user's input: a signal from a
scheduler, memory that runs out, or a bug.

- SIGTERM (what schedulers, ``kill`` and container runtimes send) is handled like Ctrl-C: the
  command saves what it can, says so, and exits 143 (130 for Ctrl-C).
- Running out of memory is one line that says how much was asked for, how much the machine has,
  and which option sets that size (not a guess at ``--batch-size``).
- An unexpected exception is one line naming a crash report (the traceback, the command, the
  versions) written under the cache folder; ``FERKIT_DEBUG=1`` prints the traceback as well.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import time
import traceback
from pathlib import Path

from . import __version__
from .errors import FerkitError
from .files import cache_dir

#: The signal that turned into KeyboardInterrupt, when it was not Ctrl-C (for the exit status).
_received: list[int] = []


def _as_interrupt(signum, _frame):
    _received.append(signum)
    raise KeyboardInterrupt


def handle_sigterm() -> None:
    """From now on SIGTERM raises KeyboardInterrupt, as Ctrl-C does, in the main thread (worker
    processes started afterwards inherit it). Does nothing outside the main thread."""
    _received.clear()
    try:
        signal.signal(signal.SIGTERM, _as_interrupt)
    except (ValueError, OSError):   # not the main thread, or a platform without it
        pass


def interrupt_status() -> int:
    """The exit status of an interrupted command: 143 after SIGTERM, 130 after Ctrl-C."""
    return 128 + _received[-1] if _received else 130


def interrupt_name() -> str:
    return "terminated (SIGTERM)" if _received and _received[-1] == signal.SIGTERM else "interrupted"


# ----------------------------------------------------------------------------- memory
def total_memory() -> int | None:
    """Bytes of physical memory (None where unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable; None where unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def check_fits(nbytes: float, what: str, hint: str) -> None:
    """Refuse, in one line, an allocation of ``nbytes`` that cannot fit in this machine's memory
    (``what`` it is for, ``hint`` which option makes it smaller)."""
    total = total_memory()
    if total is not None and nbytes > total:
        raise FerkitError(f"{what} needs {human_bytes(nbytes)}, more than this machine's {human_bytes(total)} of "
                          f"memory; {hint}")


_ASKED = re.compile(r"(?:allocate|Tried to allocate)\s+([\d.]+\s*(?:[KMGTP]i?B|bytes))", re.IGNORECASE)


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, and torch's own out-of-memory errors (CPU allocator and CUDA)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower()))


#: What sets the size of the big allocations of each command.
_MEMORY_HINTS = {
    "train": "--batch-size, --image-size, --oversample and the model's size (--arch, --model-arg) set it",
    "study": "--batch-size, --image-size, --jobs and the model's size set it",
    "gan train": "--batch-size, --image-size, --g-width, --d-width, --guide-views and the data's size set it",
    "gan evaluate": "--per-class and the model's size set it",
    "evaluate": "--batch-size and the test data's size set it",
    "predict": "--batch-size and the size of the images and videos set it",
    "synth": "--per-class, --size, --workers and --batch-size set it",
    "export": "the model's size sets it",
    "calibrate": "--batch-size and the validation data's size set it",
}


def out_of_memory_line(exc: BaseException, command: str | None) -> str:
    """One honest line about an allocation that failed: its size when the error says it, the machine's
    memory, and what sets the size in this command."""
    asked = _ASKED.search(str(exc))
    total = total_memory()
    parts = ["out of memory"]
    if asked:
        parts.append(f"an allocation of {asked.group(1)} failed")
    if total:
        parts.append(f"this machine has {human_bytes(total)}")
    command = command or ""   # "gan train", else the first word: "synth faces" -> "synth"
    hint = _MEMORY_HINTS.get(command) or _MEMORY_HINTS.get(command.split(" ")[0],
                                                            "the sizes given to this command set it")
    return f"{parts[0]}{' (' + '; '.join(parts[1:]) + ')' if len(parts) > 1 else ''}: {hint}"


def environment_error(exc: BaseException) -> str | None:
    """The one line for an OS error that the machine causes, not ferkit (a full disk, a read-only or
    forbidden folder, too many open files), wherever it surfaced; None for anything else."""
    import errno

    if not isinstance(exc, OSError) or exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                                         errno.EPERM, errno.EMFILE, errno.ENFILE, errno.EIO):
        return None
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


# ----------------------------------------------------------------------------- crash reports
def crash_dir() -> Path:
    return cache_dir() / "crash-reports"


def write_crash_report(exc: BaseException, argv: list[str] | None = None) -> Path | None:
    """Write the traceback, command line and versions to a new file; its path, or None if no
    file could be written anywhere."""
    import platform
    import tempfile

    lines = [f"ferkit {__version__} crash report, {time.strftime('%Y-%m-%d %H:%M:%S')}",
             f"command: {' '.join(argv if argv is not None else sys.argv)}",
             f"python {platform.python_version()} on {platform.platform()}"]
    for mod in ("torch", "numpy", "cv2", "PIL", "safetensors"):
        m = sys.modules.get(mod)
        if m is not None:
            lines.append(f"{mod} {getattr(m, '__version__', '?')}")
    lines += ["", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    try:
        folders = [crash_dir()]
    except Exception:  # noqa: BLE001 - the report must not fail where the crash happened
        folders = []
    for folder in folders + [Path(tempfile.gettempdir()) / "ferkit-crash-reports"]:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text("\n".join(lines))
            return path
        except OSError:
            continue
    return None


def debug() -> bool:
    return os.environ.get("FERKIT_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def crash_line(exc: BaseException, prog: str = "ferkit", argv: list[str] | None = None) -> str:
    """The one line for an unexpected exception (its report written first; with FERKIT_DEBUG=1 the
    traceback is printed on stderr too)."""
    if debug():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    report = write_crash_report(exc, argv)
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    where = (f"the traceback is in {report}" if report is not None else "no crash report could be written")
    return (f"{prog}: internal error ({what}); this is a bug in ferkit, not in your input: {where} "
            "(FERKIT_DEBUG=1 prints it)")
