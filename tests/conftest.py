"""Shared fixtures: tiny learnable datasets the tests make themselves."""
from __future__ import annotations

import atexit
import contextlib
import csv
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

# Module-scoped fixtures run before the per-test cache below: keep their cache out of ~ and the repo.
os.environ["FERKIT_CACHE"] = tempfile.mkdtemp(prefix="ferkit-test-cache-")
atexit.register(shutil.rmtree, os.environ["FERKIT_CACHE"], ignore_errors=True)


def pattern_image(class_index: int, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """Noise plus a class-specific bright bar: learnable in one or two epochs."""
    img = (rng.random((size, size)) * 90).astype(np.uint8)
    k = size // 8
    pos = (class_index * 2 + 1) * k % (size - k)
    if class_index % 2 == 0:
        img[pos:pos + k, :] = np.clip(img[pos:pos + k, :].astype(int) + 150, 0, 255)
    else:
        img[:, pos:pos + k] = np.clip(img[:, pos:pos + k].astype(int) + 150, 0, 255)
    return img


def make_folder(root: Path, classes, per_class: int, seed: int = 0, size: int = 40, ext: str = ".png") -> Path:
    import cv2

    rng = np.random.default_rng(seed)
    for i, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            cv2.imwrite(str(d / f"{name}_{j:03d}{ext}"), pattern_image(i, rng, size))
    return root


def face_photo() -> Path:
    """A real face photo that ships with matplotlib (a ferkit dependency): Grace Hopper, 512x600, one face."""
    from ferkit.bundled import sample_photo

    return sample_photo()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own decoded-dataset cache."""
    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tiny_splits(tmp_path):
    """Three-class train/val folders (FER2013 folder spelling for one class)."""
    classes = ["angry", "happy", "surprise"]
    train = make_folder(tmp_path / "data" / "train", classes, 24, seed=1)
    val = make_folder(tmp_path / "data" / "val", classes, 10, seed=2)
    return train, val


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV file ferkit wrote, as dicts."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def one_line_error(capfd) -> str:
    """The one line a failed command printed on stderr (no traceback)."""
    err = capfd.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("ferkit") and ": error: " in err.split("\n")[0], err   # ferkit's, or its parser's
    return err


def interrupt_gan_at(monkeypatch, iteration: int):
    """Make GAN training raise KeyboardInterrupt (Ctrl-C) when it reaches ``iteration``; returns the
    real ``GanTrainer.step`` (to put back for the resume)."""
    from ferkit.train.gan import GanTrainer

    real_step = GanTrainer.step

    def flaky(self, *a):
        if self.iteration == iteration:
            raise KeyboardInterrupt
        return real_step(self, *a)
    monkeypatch.setattr(GanTrainer, "step", flaky)
    return real_step


@contextlib.contextmanager
def running_server(app, log_level: str = "warning"):
    """A uvicorn server for ``app`` in a thread on 127.0.0.1 (a free port); yields its socket and
    stops the server on leaving."""
    from ferkit.serve import bind_socket, uvicorn_server

    sock = bind_socket("127.0.0.1", 0)
    srv = uvicorn_server(app, log_level=log_level)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield sock
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()
