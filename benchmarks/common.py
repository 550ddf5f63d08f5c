"""Shared helpers for the benchmark scripts (not part of the package)."""
from __future__ import annotations

import os
import platform
import tarfile
from pathlib import Path

import torch

SHARED_TAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fer2013-train-val.tar.gz"


def fer2013_dir() -> Path | None:
    """Extract the shared FER2013 archive once to ~/.cache/ferkit/fer2013 (never into the repo)."""
    tar = Path(os.environ.get("FER2013_TAR", SHARED_TAR))
    target = Path(os.environ.get("FER2013_DIR", Path.home() / ".cache" / "ferkit" / "fer2013"))
    if (target / "train").is_dir() and (target / "validation").is_dir():
        return target
    return _extract(tar, target, lambda tmp: next((p.parent for p in tmp.rglob("train") if p.is_dir()), tmp))


def _extract(tar: Path, target: Path, inner) -> Path | None:
    """Extract ``tar`` beside ``target`` and move the folder ``inner(tmp)`` into place."""
    if not tar.is_file():
        return None
    tmp = target.with_name(target.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar) as fh:
        fh.extractall(tmp, filter="data")
    os.replace(inner(tmp), target)
    return target


def shared_dataset(archive: str, folder: str) -> Path | None:
    """Extract one of ../shared/data's archives once to ~/.cache/ferkit/<folder> (never into the repo)
    and return the folder in it called ``folder`` (``ferplus``, ``ckplus48-dev``); None when absent."""
    target = Path.home() / ".cache" / "ferkit" / folder
    if target.is_dir():
        return target
    return _extract(SHARED_TAR.parent / archive, target,
                    lambda tmp: next((p for p in tmp.rglob(folder) if p.is_dir()), tmp))


#: the CPU flags that decide which kernels run (what the figures depend on), as lscpu names them
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def machine() -> str:
    """The CPU's model, its vector/matrix flags among :data:`ISA_FLAGS`, cores, torch and its threads."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = (" ".join(f for f in ISA_FLAGS if f in flags) or "no AVX2") if flags else "flags unknown"
    return f"{cpu} ({isa}), {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
