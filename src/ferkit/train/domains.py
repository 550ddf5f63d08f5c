"""Several training sources (domains) in one run, each with a sampling weight.

``ferkit train --train-dir ferplus/train:0.25 --train-dir sfew/train:6 --train-dir ckplus:3`` trains
on FER+ votes, film faces and lab faces at once. A source's weight W is how many times, on average,
each of its faces is drawn per epoch: the whole part of W as full copies, the fraction as a fresh
random subset every epoch (from the run's generator, so a resumed run draws the same faces). A
source of 860 faces at weight 6 gives 5,160 draws an epoch; FER+'s 28,478 at 0.25 give 7,120.

The model's classes are those of ``--classes`` (default: the first source's); every other source
contributes the faces of those classes it has (SFEW has no contempt; its faces simply never say
contempt). When any source has vote distributions (``--labels soft`` on FER+), the hard-labelled
sources join as one-hot distributions, so one loss serves all of them.

Example::

    from ferkit.train.domains import parse_source
    parse_source("sfew/train:6")      # TrainSource(path='sfew/train', weight=6.0)
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from ..errors import FerkitError

#: The largest weight a source may have (more would be a typo, and a memory trap).
MAX_WEIGHT = 100.0


@dataclass(frozen=True)
class TrainSource:
    """One training source: a class-folder tree, FER+ folder or manifest, and its weight."""

    path: str
    weight: float = 1.0

    def spec(self) -> str:
        """The ``PATH[:W]`` text this source is written as (in config.json and on the command line)."""
        return self.path if self.weight == 1.0 else f"{self.path}:{self.weight:g}"


def parse_source(spec: str) -> TrainSource:
    """``PATH`` or ``PATH:W`` -> TrainSource. The weight is the part after the last ``:`` when it is a
    number (so ``C:/data`` stays a path); it must be in (0, MAX_WEIGHT]."""
    text = str(spec).strip()
    if not text:
        raise FerkitError("--train-dir is empty")
    path, sep, tail = text.rpartition(":")
    if sep and path and not os.path.exists(text):
        try:
            weight = float(tail)
        except ValueError:
            return TrainSource(text)
        if not (math.isfinite(weight) and 0 < weight <= MAX_WEIGHT):
            raise FerkitError(f"--train-dir {text}: the weight after ':' must be a number in (0, {MAX_WEIGHT:g}] "
                              f"(got {tail})")
        return TrainSource(path, weight)
    return TrainSource(text)


def check_sources(specs) -> tuple[str, ...]:
    """Parse (and so check) each extra source spec; returns them in their normal written form."""
    return tuple(parse_source(s).spec() for s in specs)


def load_sources(sources: list[TrainSource], classes, image_size: int, strict: bool = False, progress: bool = True,
                 labels: str = "majority", hint: str = ""):
    """Decode every source into one ImageSet whose ``domain`` says which source each face came from.

    The first source fixes the classes when ``classes`` is None (as a single ``--train-dir`` does).
    Raises FerkitError naming the source when one has none of the classes.
    """
    from ..data import ImageSet, load_dataset, scan_source

    first = sources[0]
    head = load_dataset(first.path, classes, image_size, strict, progress=progress, role="training data",
                        hint=hint, labels=labels)
    if len(sources) == 1 and first.weight == 1.0:
        return head
    classes = head.classes
    parts = [head]
    for src in sources[1:]:
        scan = scan_source(src.path, None, "training data")
        present = tuple(c for c in classes if c in scan.found_classes)
        if not present:
            raise FerkitError(f"training data {src.path} has none of the training classes ({', '.join(classes)}; "
                              f"it has: {', '.join(scan.found_classes) or 'none'})")
        mode = labels if scan.votes is not None else "majority"
        part = load_dataset(src.path, present, image_size, strict, progress=progress, role="training data",
                            labels=mode)
        remap = np.asarray([classes.index(c) for c in present], dtype=np.int64)
        targets = part.targets
        if targets is not None:   # soft votes over ``present``: spread into the full class list
            full = np.zeros((len(part), len(classes)), np.float32)
            full[:, remap] = targets
            targets = full
        majority = None if part.majority is None else np.where(part.majority >= 0, remap[part.majority], -1)
        parts.append(ImageSet(part.images, remap[part.labels], part.paths, classes, part.skipped, targets,
                              part.protocol, majority))
    return concat_sources(parts, [s.weight for s in sources])


def concat_sources(parts, weights: list[float]):
    """One ImageSet of the parts (same classes), with ``domain`` and ``domain_weights`` set. Hard-labelled
    parts become one-hot distributions when any part has soft targets."""
    from ..data import ImageSet

    classes = parts[0].classes
    soft = any(p.targets is not None for p in parts)
    eye = np.eye(len(classes), dtype=np.float32)
    targets = np.concatenate([p.targets if p.targets is not None else eye[p.labels] for p in parts]) if soft else None
    majority = None
    if soft:   # which class each face counts as for --oversample: the vote majority, or the hard label
        majority = np.concatenate([p.majority if p.majority is not None else p.labels for p in parts])
    return ImageSet(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                    [q for p in parts for q in p.paths], classes, [s for p in parts for s in p.skipped], targets,
                    "soft" if soft else parts[0].protocol, majority,
                    domain=np.concatenate([np.full(len(p), i, np.int64) for i, p in enumerate(parts)]),
                    domain_weights=tuple(float(w) for w in weights))


def epoch_size(domain: np.ndarray | None, weights: tuple[float, ...]) -> int | None:
    """Faces drawn per epoch under the weights (None: no weights, every face once)."""
    if domain is None:
        return None
    counts = np.bincount(domain, minlength=len(weights))
    return int(sum(int(n * math.floor(w)) + int(round(n * (w - math.floor(w)))) for n, w in zip(counts, weights)))


def epoch_order(domain, weights: tuple[float, ...], gen):
    """A shuffled epoch of face indices under the sources' weights (torch int64 tensor on the CPU).

    Each face of a source of weight W appears floor(W) times, plus a random subset of round(n x frac(W))
    of its faces; every draw comes from ``gen``, so the epoch is reproducible and resumable."""
    import torch

    dom = torch.as_tensor(domain)
    picks = []
    for d, w in enumerate(weights):
        idx = torch.nonzero(dom == d).flatten()
        whole, frac = int(math.floor(w)), w - math.floor(w)
        picks += [idx] * whole
        extra = int(round(len(idx) * frac))
        if extra:
            picks.append(idx[torch.randperm(len(idx), generator=gen)[:extra]])
    order = torch.cat(picks) if picks else torch.zeros(0, dtype=torch.int64)
    return order[torch.randperm(len(order), generator=gen)]

