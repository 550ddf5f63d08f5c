"""Models that ship inside the ferkit package: nothing is downloaded, ever.

Example::

    from ferkit import Recognizer
    r = Recognizer.load()                      # the default bundled model (FER+, eight classes)
    r.predict(sample_photo())                  # a real photo that ships with matplotlib

Classifiers (kind ``classifier``, for ``ferkit predict``/``evaluate``/``train --init``) and
expression generators (kind ``generator``, for ``ferkit synth edit NAME``), each a float16
safetensors file in ``ferkit/weights/`` with its JSON record. ``ferkit models`` lists them; each
has a model card in the repository's ``docs/``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import FerkitError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class BundledModel:
    name: str
    file: str          # inside ferkit/weights/
    summary: str
    card: str          # model card, relative to the repository root
    kind: str = "classifier"   # classifier | generator (an expression editor for `ferkit synth edit`)

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file


BUNDLED: dict[str, BundledModel] = {m.name: m for m in (
    BundledModel("wild-vgg16", "wild-vgg16.safetensors",
                 "ferplus-vgg16 fine-tuned by `ferkit train` on three domains at once (FER+ votes, SFEW's film "
                 "faces, CK+'s lab faces) with real-photo conditions (--photo); steadier off FER2013's pictures, "
                 "4.8 points below ferplus-vgg16 on FER+ validation; eight classes, 48 px gray faces; the default",
                 "docs/model-card-wild.md"),
    BundledModel("ferplus-vgg16", "ferplus-vgg16.safetensors",
                 "VGG-style CNN (width 16) trained by `ferkit train` on FER+ train vote distributions with the "
                 "rare expressions' faces repeated 5x, distilled from ferplus-vgg24, calibrated on FER+ "
                 "validation; eight classes (the seven + contempt), 48 px gray faces; the default until "
                 "2026-12-07, and still the best on FER2013's own pictures",
                 "docs/model-card-ferplus.md"),
    BundledModel("ferplus-vgg24", "ferplus-vgg24.safetensors",
                 "as ferplus-vgg16, width 24: 0.5 points more accurate on FER+ validation and steadier under "
                 "small shifts of the crop, about 1.7x slower", "docs/model-card-ferplus.md"),
    BundledModel("fer2013-vgg", "fer2013-vgg.safetensors",
                 "VGG-style CNN (width 48) trained by `ferkit train --recipe fer2013` (80 epochs) on FER2013's "
                 "train split; seven classes, 48 px gray faces", "docs/model-card.md"),
    BundledModel("fer2013-editor", "fer2013-editor.safetensors",
                 "expression editor (StarGAN family) trained by `ferkit gan train` on FER2013's train split; moves "
                 "48 px gray faces to another expression (`ferkit synth edit fer2013-editor ...`)", "docs/generator.md",
                 kind="generator"),
)}
DEFAULT_MODEL = "wild-vgg16"


def bundled_path(name: str = DEFAULT_MODEL) -> Path:
    """The weights file of a bundled model (FerkitError if the name is unknown or the file absent)."""
    if name not in BUNDLED:
        raise FerkitError(f"unknown bundled model {name!r}; bundled: {', '.join(BUNDLED)}")
    path = BUNDLED[name].path
    if not path.is_file():
        if BUNDLED[name].kind == "generator":
            raise FerkitError(f"bundled generator {name!r} is not in this installation ({path}); pass a GAN run "
                              f"folder or generator checkpoint instead ({BUNDLED[name].card} says how to train and "
                              "bundle one)")
        raise FerkitError(f"bundled model {name!r} is missing from this installation ({path}); reinstall ferkit "
                          "or pass a model (run folder, .safetensors or .onnx)")
    return path


def bundled_names(kind: str | None = None) -> tuple[str, ...]:
    """Names of the bundled models (of ``kind`` only: classifier or generator), in listing order."""
    return tuple(n for n, m in BUNDLED.items() if kind is None or m.kind == kind)


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """None -> the default bundled model; a bundled model's name -> its file; anything else as given."""
    if model is None:
        return bundled_path(DEFAULT_MODEL)
    if isinstance(model, str) and model in BUNDLED and not Path(model).exists():
        return bundled_path(model)
    return Path(model)


#: Suffixes of model files: ferkit's own, and other frameworks' (refused with a reason, never unpickled).
MODEL_SUFFIXES = (".safetensors", ".onnx", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".h5", ".keras",
                  ".tflite", ".pb")


def is_model_path(text: str) -> bool:
    """Does a command-line word name a model (rather than an image, video or folder of images)?"""
    from .data import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

    p = Path(text)
    if text in BUNDLED and not p.exists():
        return True
    if p.is_dir():   # a run folder (a GAN's too, or one without a checkpoint yet: predict says which)
        return any((p / name).is_file() for name in ("best.safetensors", "last.safetensors", "generator.safetensors",
                                                     "config.json"))
    if not p.exists():   # a missing path that is not an image or video name: a mistyped model, say so
        return p.suffix.lower() not in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    return p.suffix.lower() in MODEL_SUFFIXES   # a .pt is refused as a model, not read as a photo


def sample_photo() -> Path:
    """A real portrait photo that ships inside an installed registry package (matplotlib's sample
    data: Grace Hopper, public domain), for demos and tests without downloads."""
    from .files import prepare_matplotlib

    prepare_matplotlib()
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        raise FerkitError(f"matplotlib's sample photo {path} is missing from this installation")
    return path
