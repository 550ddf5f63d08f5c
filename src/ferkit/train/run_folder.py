"""The run folder: every file of a training run, written atomically, and how a run resumes.

Layout::

    config.json        written first (the folder is recognisably a ferkit run from then on): the
                       resolved config, classes, device, data counts, skipped files
    history.csv        per epoch: train/val loss and accuracy, learning rate, seconds
    curves.png         accuracy and loss per epoch, train vs validation
    best.safetensors   weights of the best epoch by the config's monitor (+ JSON record)
    last.safetensors   weights after the last epoch
    summary.json       best epoch and its validation metrics, training time (written last)
    state/             everything needed to continue (weights, optimiser, EMA, random generators);
                       kept after the run finishes, so a larger --epochs continues it

Any interruption leaves either the previous complete state or the new one (each file is renamed
into place), so re-running the same command continues after the last finished epoch.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..console import log
from ..errors import FerkitError
from ..files import (
    LOCK_NAME,
    TMP_SUFFIX,
    CsvDictWriter,
    OutputLock,
    atomic_path,
    make_dir,
    read_json,
    save_figure,
    write_json,
    write_safetensors,
)
from ..models import CheckpointRecord, save_checkpoint
from .config import RunConfig

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


#: What config.json says to mark a folder as a ferkit run (the name config.json alone does not).
RUN_MARKER = "ferkit_run"
RUN_FORMAT = 1
#: Everything a run folder may hold that ferkit wrote; ``--overwrite`` removes these and nothing else.
RUN_FILES = frozenset({"config.json", "history.csv", "curves.png", "best.safetensors", "last.safetensors",
                       "summary.json", "generator.safetensors", LOCK_NAME})
RUN_DIRS = frozenset({"state", "samples", "eval-test"})


def is_run_folder(path: str | Path) -> bool:
    """Is ``path`` a ferkit run folder: a config.json with ferkit's marker (or, for runs written
    before the marker, ferkit's record keys), beside nothing that ferkit did not write?"""
    cfg = Path(path) / "config.json"
    try:
        record = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict):
        return False
    return record.get(RUN_MARKER) == RUN_FORMAT or ({"classes", "device", "seed"} <= set(record)
                                                    and not foreign_entries(path))


def foreign_entries(path: str | Path) -> list[str]:
    """Names in a run folder that ferkit did not write (sorted)."""
    return sorted(e.name for e in Path(path).iterdir()
                  if not (_is_temp(e) or (e.name in RUN_FILES and not e.is_dir())
                          or (e.name in RUN_DIRS and e.is_dir() and not e.is_symlink())))


class RunFolder:
    """Owns the files of one run. ``writer`` is False on processes that must not write (DDP ranks > 0).

    The writer holds an exclusive lock on the folder from :meth:`prepare` until :meth:`release`:
    a second process on the same ``--out`` stops with one line."""

    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self._lock: OutputLock | None = None

    # ------------------------------------------------------------------ opening
    def prepare(self, cfg: RunConfig, overwrite: bool) -> dict | None:
        """Make the folder ready. Returns the saved progress to continue from, or None for a new run.

        Raises FerkitError for a folder that is not ours (or holds files ferkit did not write: they
        are never deleted, even with ``overwrite``), a folder another process is writing, an
        interrupted run with another config, or a finished run that cannot continue.
        """
        p = self.path
        if p.exists() and not p.is_dir():
            raise FerkitError(f"output {p} exists and is not a folder")
        if p.is_dir() and any(not _is_temp(e) and e.name != LOCK_NAME for e in p.iterdir()):
            if not is_run_folder(p):
                raise FerkitError(f"{p} is not empty and is not a ferkit run folder; nothing was changed: choose "
                                  "another --out (--overwrite only replaces ferkit's own runs)")
        make_dir(p, "run folder")
        if self.writer:
            self._lock = OutputLock(p, "run folder").acquire()
        foreign = foreign_entries(p)
        if foreign:   # checked again under the lock: --overwrite must never take these with it
            raise FerkitError(f"{p} holds files ferkit did not write ({', '.join(foreign[:5])}"
                              f"{' ...' if len(foreign) > 5 else ''}); move them, or choose another --out")
        if (p / "config.json").exists():
            if overwrite:
                self._clear()
            else:
                self._remove_temp_files()   # left by a kill in the middle of a write
                progress = self._continuable(cfg)
                if progress is not None:
                    return progress
                self._clear()  # ours, but interrupted before its first epoch finished: nothing to keep
        return None

    def release(self) -> None:
        """Give up the folder's lock (the OS does it too when the process ends)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _continuable(self, cfg: RunConfig) -> dict | None:
        """Saved progress that this config may continue; None when there is none to keep."""
        p = self.path
        state_json = p / "state" / "state.json"
        summary = read_json(p / "summary.json") if (p / "summary.json").exists() else None
        if not state_json.exists():
            if summary is not None:
                raise FerkitError(f"{p} already holds a finished run (without resume state); pass --overwrite "
                                  "to replace it")
            return None
        saved = read_json(state_json)
        if not cfg.matches(saved.get("config") or {}):
            diff = ", ".join(cfg.differences(saved.get("config") or {})) or "fields"
            raise FerkitError(f"{p} holds a run with a different config ({diff} differ); pass --overwrite "
                              "to start over, or choose another --out")
        done, total, stopped = cfg.progress_of(saved)
        unit = cfg.unit
        if summary is None and (done >= total or stopped):
            log(f"finishing {p}: its last {unit[:-1]} was saved, its final files were not")
            return saved
        if summary is not None or done >= total or stopped:
            if done >= total:
                raise FerkitError(f"{p} already holds a finished run of {done} {unit}; pass a larger --{unit} to "
                                  "continue it, or --overwrite to replace it")
            if stopped:
                raise FerkitError(f"{p} stopped early after {done} {unit} ({stopped}); raise --patience (0 = off) "
                                  "to continue it, or pass --overwrite")
            log(f"continuing the finished run in {p} from {unit[:-1]} {done} to {total}")
            if self.writer:
                (p / "summary.json").unlink(missing_ok=True)
        else:
            log(f"resuming {p} after {unit[:-1]} {done}")
        self._note_total(unit, done, total)
        return saved

    def _note_total(self, unit: str, done: int, total: int) -> None:
        """config.json names the run's new length when a larger --epochs/--iterations continues it
        (it is written when the run starts), with each change listed under "continued"."""
        path = self.path / "config.json"
        if not self.writer or not path.is_file():
            return
        record = read_json(path)
        if record.get(unit) in (None, total):
            return
        record.setdefault("continued", []).append({"after": done, "from": record[unit], "to": total})
        record[unit] = total
        write_json(path, record)

    def _remove_temp_files(self) -> None:
        if self.writer:
            for tmp in [*self.path.iterdir(), *self.path.glob("state/*")]:
                if _is_temp(tmp):
                    tmp.unlink(missing_ok=True)

    def _clear(self) -> None:
        """Remove what ferkit wrote here (prepare() has refused folders holding anything else)."""
        if not self.writer:
            return
        for entry in self.path.iterdir():
            if entry.name == LOCK_NAME:
                continue
            if entry.name in RUN_DIRS and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.name in RUN_FILES or _is_temp(entry):
                entry.unlink()

    # ------------------------------------------------------------------ files
    def write_config(self, record: dict) -> None:
        if self.writer:
            write_json(self.path / "config.json", {RUN_MARKER: RUN_FORMAT, **record})

    def save_checkpoint(self, name: str, model, record: CheckpointRecord) -> None:
        if self.writer:
            save_checkpoint(model, self.path / name, record)

    def write_history(self, history: list[dict], fields=HISTORY_FIELDS) -> None:
        if not self.writer:
            return
        with atomic_path(self.path / "history.csv") as tmp, open(tmp, "w", newline="") as fh:
            w = CsvDictWriter(fh, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(history)

    def plot_curves(self, history: list[dict], title: str = "") -> None:
        if self.writer:
            plot_curves(history, self.path / "curves.png", title)

    def write_summary(self, summary: dict) -> None:
        if self.writer:
            write_json(self.path / "summary.json", summary)

    # ------------------------------------------------------------------ resume state
    def save_state(self, tensors: dict[str, torch.Tensor], progress: dict) -> None:
        """Weights/optimiser/generator tensors + JSON progress; the JSON is renamed last, and names
        the tensor file it belongs to, so a kill between the two renames keeps the previous pair."""
        if not self.writer:
            return
        state_dir = make_dir(self.path / "state", "resume-state folder")
        name = f"state-{progress.get('iteration', len(progress['history']))}.safetensors"
        write_safetensors(state_dir / name, {k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        write_json(state_dir / "state.json", {**progress, "tensors": name})
        for old in state_dir.glob("state-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def drop_state(self) -> None:
        """Remove the resume state of a finished run (summary.json already marks it finished)."""
        if self.writer:
            shutil.rmtree(self.path / "state", ignore_errors=True)

    def load_state(self, progress: dict) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        path = self.path / "state" / progress.get("tensors", "state.safetensors")
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors' own error type for a damaged file
            raise FerkitError(f"resume state {path} is damaged ({str(exc).splitlines()[0][:100]}); "
                              "pass --overwrite to start over") from None


def _is_temp(entry: Path) -> bool:
    """A temporary file of an atomic write that a kill left behind (ours, safe to remove)."""
    return entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX) and entry.is_file()


def plot_curves(history: list[dict], path: Path, title: str = "") -> None:
    """Accuracy and loss per epoch, train vs validation (the reference's plot.png)."""
    from ..files import new_figure

    ep = [h["epoch"] for h in history]
    fig = new_figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, key, name in ((axes[0], "acc", "accuracy"), (axes[1], "loss", "loss")):
        ax.plot(ep, [h[f"train_{key}"] for h in history], "o-", ms=3, label="train")
        ax.plot(ep, [h[f"val_{key}"] for h in history], "o-", ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(f"model {name}")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
