"""Micro-batching: faces from concurrent requests go into one model call.

A request submits its (N, S, S) uint8 faces and gets a :class:`concurrent.futures.Future` of their
(N, classes) probabilities. One worker thread takes the first waiting request, waits up to
``max_wait_ms`` for more (until ``max_batch`` faces are gathered), runs the model once per
test-time-augmentation mode present, and hands every request its rows. The queue is bounded: a
submit beyond ``max_pending`` waiting requests raises :class:`QueueFull` at once instead of
queueing work that would time out anyway.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import numpy as np


class QueueFull(Exception):
    """More requests are waiting than the batcher accepts; try again shortly."""


@dataclass
class _Item:
    faces: np.ndarray
    tta: str
    future: Future


class MicroBatcher:
    """Batches face classification across callers.

    Args:
        classify: ``classify(faces_uint8, tta) -> (N, classes) probabilities``, called from the
            worker thread only (so the model never runs twice at once).
        max_batch: faces per model call (a single request larger than this is still one call).
        max_wait_ms: how long the first waiting request waits for others to join its batch.
        max_pending: requests allowed to wait; more raise :class:`QueueFull`.
        on_batch: called with the number of faces of each model call (the server's metrics).
    """

    def __init__(self, classify: Callable[[np.ndarray, str], np.ndarray], max_batch: int = 64,
                 max_wait_ms: float = 5.0, max_pending: int = 256, on_batch: Callable[[int], None] | None = None):
        self.classify = classify
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.max_pending = max(1, int(max_pending))
        self.on_batch = on_batch
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self.calls = 0          # model calls made
        self.faces = 0          # faces classified
        self.requests = 0       # requests served
        self._thread = threading.Thread(target=self._run, name="ferkit-batcher", daemon=True)
        self._thread.start()

    def submit(self, faces: np.ndarray, tta: str = "none") -> Future:
        """Queue ``faces`` (N, S, S) uint8; the future gives their probabilities (N, classes)."""
        fut: Future = Future()
        if len(faces) == 0:
            fut.set_result(np.zeros((0, 0), np.float32))
            return fut
        if self._closed:
            raise QueueFull("the server is shutting down")
        with self._lock:
            if self._queue.qsize() >= self.max_pending:
                raise QueueFull(f"{self.max_pending} requests are already waiting")
            self._queue.put(_Item(faces, tta, fut))
        return fut

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after the requests already queued (waits up to ``timeout`` seconds)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    # -- worker
    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        batch, n = [first], len(first.faces)
        deadline = time.monotonic() + self.max_wait
        while n < self.max_batch:
            left = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
            n += len(item.faces)
        return batch, False

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._gather(first)
            for tta in dict.fromkeys(item.tta for item in batch):     # one call per mode, in arrival order
                self._serve([item for item in batch if item.tta == tta], tta)
            if stop:
                return

    def _serve(self, items: list[_Item], tta: str) -> None:
        items = [it for it in items if it.future.set_running_or_notify_cancel()]
        if not items:
            return
        faces = np.concatenate([it.faces for it in items])
        try:
            probs = self.classify(faces, tta)
            if probs is None or len(probs) != len(faces):
                got = None if probs is None else len(probs)
                raise RuntimeError(f"the model gave {got} rows for {len(faces)} faces")
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request, the worker lives on
            for it in items:
                it.future.set_exception(exc)
            return
        self.calls += 1
        self.faces += len(probs)
        self.requests += len(items)
        if self.on_batch is not None:
            self.on_batch(len(probs))
        start = 0
        for it in items:
            it.future.set_result(probs[start:start + len(it.faces)])
            start += len(it.faces)
