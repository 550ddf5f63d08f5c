"""Faces from the learned generator: real faces moved to a target expression (``ferkit synth edit``).

    ferkit gan train --data real/ --out runs/gan
    ferkit synth edit runs/gan --source real/ --out data/gan --per-class 500
    ferkit synth edit fer2013-editor --source real/ --out data/gan --per-class 500   # a bundled generator

Each written face is a real source face of another expression, edited by the generator to the
target class. The output has the layout of ``synth faces`` (``<class>/<class>_NNNNNN.png`` plus
``metadata.csv``: file, class, source file, source class, generator file and SHA-256, its
iteration, seed), so ``mix`` and ``study`` take it unchanged. The same seed gives the same faces.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..console import log, progress_bar
from ..data import load_dataset, scan_source
from ..errors import FerkitError
from ..files import file_sha256, refuse_output_over_input
from ..labels import parse_classes
from ..models import CheckpointRecord, model_file, open_model
from ..models.gan import to_uint8
from ..runtime import require_finite, select_device
from .writer import AtomicDataset, check_out_dir, write_metadata, write_png

EDIT_COLUMNS = ("file", "class", "source_file", "source_class", "seed", "generator", "generator_sha256",
                "iteration")


def generator_path(run: str | Path) -> Path:
    """A GAN run folder's generator.safetensors, a bundled generator's file (by name), or a
    generator checkpoint file as given (:func:`ferkit.models.model_file` with kind generator)."""
    return model_file(run, kind="generator")


def load_generator(run: str | Path, device: str | torch.device = "cpu"):
    """(generator in eval mode, its CheckpointRecord, the checkpoint path)."""
    g = open_model(run, kind="generator", device=device)
    return g.module, g.record, g.path


def open_classifier(model, classes, role: str, device: str | torch.device = "cpu"):
    """A classifier that guides or judges a generator (``--guide``, ``--judge``; None: the bundled
    default): (model in eval mode, its record, its weights file, its outputs for ``classes`` in
    that order, the file's SHA-256). A generator, a file that is not a ferkit classifier, or a
    classifier that lacks one of ``classes`` is one line that names ``role``."""
    from ..bundled import DEFAULT_MODEL

    shown = model if model is not None else f"(default: the bundled {DEFAULT_MODEL})"
    try:
        opened = open_model(model, device=device, backend="torch")
    except FerkitError as exc:
        raise FerkitError(f"{role} {shown}: {exc}") from None
    net, record, path = opened.module, opened.record, opened.path
    missing = [c for c in classes if c not in record.classes]
    if missing:
        raise FerkitError(f"{role} {shown} cannot read {', '.join(missing)}: its classes are "
                          f"{', '.join(record.classes)}, and it must know every class of the generator "
                          f"({', '.join(classes)})")
    return net, record, path, [record.classes.index(c) for c in classes], file_sha256(path)


def source_classes(source, record: CheckpointRecord, only=None, option: str = "--from-classes") -> tuple[str, ...]:
    """The source's classes (``only`` those, when given), which the generator must know, in the
    generator's order. Class folders outside ``only`` are ignored; ``option`` is the command's
    name for ``only``, which the error for an unknown class suggests."""
    found = scan_source(source, None, "source data").found_classes
    if only is not None:
        only = parse_classes(only)
        absent = [c for c in only if c not in found]
        if absent:
            raise FerkitError(f"source data has no {', '.join(absent)} faces (it has {', '.join(found)})")
        found = only
    unknown = [c for c in found if c not in record.classes]
    if unknown:
        raise FerkitError(f"source data has classes the generator does not know: {', '.join(unknown)} (it knows "
                          f"{', '.join(record.classes)}); choose the source classes with {option} or train the GAN "
                          "on them")
    return tuple(c for c in record.classes if c in found)


#: Faces per generator call: 32-64 keep a 48 px batch's activations in cache; 256 was ~35% slower
#: on a 2-core CPU (fp32, 185 vs 290 faces/s).
EDIT_BATCH = 64


@torch.no_grad()
def generate(G, record: CheckpointRecord, faces: np.ndarray, targets: np.ndarray, device: torch.device,
             batch_size: int = EDIT_BATCH) -> np.ndarray:
    """uint8 faces (N, S, S) moved to ``targets`` (indices into record.classes) -> uint8 (N, S, S)."""
    out = np.zeros_like(faces)
    for s in range(0, len(faces), batch_size):
        x = record.input.to_tensor(faces[s:s + batch_size], device)
        t = torch.as_tensor(targets[s:s + batch_size], device=device)
        edited = G(x, t)
        require_finite(edited, "the generator")   # NaN would be written as black faces
        out[s:s + batch_size] = to_uint8(edited)
    return out


def plan_edits(labels: np.ndarray, n_classes: int, targets, per_class: int, seed: int) -> dict[int, np.ndarray]:
    """For each target class index: ``per_class`` source indices of faces of other classes, drawn
    without replacement while they last (then again from a new permutation), from a seeded RNG."""
    plan = {}
    for t in targets:
        pool = np.flatnonzero(labels != t)
        if not len(pool):
            raise FerkitError("the source data has no face of another expression to edit")
        rng = np.random.default_rng([seed, int(t)])
        reps = -(-per_class // len(pool))
        plan[int(t)] = np.concatenate([rng.permutation(pool) for _ in range(reps)])[:per_class]
    return plan


def edit_faces(gan_run, source, out, per_class: int, seed: int = 0, classes=None, batch_size: int = EDIT_BATCH,
               device: str = "auto", overwrite: bool = False, progress: bool = True, from_classes=None) -> Path:
    """Write ``per_class`` edited faces per target class (default: every class the generator knows),
    edited from the source's faces of ``from_classes`` (default: all its classes).

    Raises FerkitError for a run without a generator, a classifier checkpoint, source classes the
    generator does not know, or an unusable output folder (checked before any work).
    """
    if not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise FerkitError(f"per-class must be a positive whole number (got {per_class!r})")
    out = Path(out)
    refuse_output_over_input(out, [source], input_option="--source", replaces=True)
    check_out_dir(out, overwrite)
    dev = select_device(device)
    G, record, path = load_generator(gan_run, dev)
    src_classes = source_classes(source, record, from_classes)
    targets = parse_classes(classes) if classes is not None else record.classes
    unknown = [c for c in targets if c not in record.classes]
    if unknown:
        raise FerkitError(f"the generator cannot make {', '.join(unknown)}; it knows {', '.join(record.classes)}")
    data = load_dataset(source, src_classes, record.image_size, progress=progress, role="source data")
    to_gen = np.asarray([record.classes.index(c) for c in data.classes])
    labels = to_gen[data.labels]                               # source labels in the generator's class order
    plan = plan_edits(labels, len(record.classes), [record.classes.index(c) for c in targets], per_class, seed)
    digest = file_sha256(path)
    log(f"editing {len(data)} source faces into {per_class} per class of {', '.join(targets)} with {path}")
    rows = []
    with AtomicDataset(out) as tmp:
        bar = progress_bar(total=per_class * len(targets), enabled=progress, desc="edit", unit="face")
        for t, idx in plan.items():
            cls = record.classes[t]
            (tmp / cls).mkdir()
            faces = generate(G, record, data.images[idx], np.full(len(idx), t), dev, batch_size)
            for i, (face, s) in enumerate(zip(faces, idx)):
                rel = f"{cls}/{cls}_{i:06d}.png"
                write_png(tmp / rel, face)
                rows.append({"file": rel, "class": cls, "source_file": data.paths[s],
                             "source_class": record.classes[labels[s]], "seed": seed, "generator": str(path),
                             "generator_sha256": digest, "iteration": record.epoch})
            bar.update(len(idx))
        bar.close()
        write_metadata(tmp / "metadata.csv", rows, EDIT_COLUMNS)
    return out
