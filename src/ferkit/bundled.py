"""Models that ship inside the ferkit package: nothing is downloaded, ever.

Example::

    from ferkit import Recognizer
    r = Recognizer.load()                      # the default bundled model (FER2013, seven classes)
    r.predict(sample_photo())                  # a real photo that ships with matplotlib

``ferkit models`` lists them; each has a model card in the repository's ``docs/``.
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

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file


BUNDLED: dict[str, BundledModel] = {m.name: m for m in (
    BundledModel("fer2013-vgg", "fer2013-vgg.safetensors",
                 "VGG-style CNN (width 48) trained by `ferkit train --recipe fer2013` (80 epochs) on FER2013's "
                 "train split; seven classes, 48 px gray faces", "docs/model-card.md"),
)}
DEFAULT_MODEL = "fer2013-vgg"


def bundled_path(name: str = DEFAULT_MODEL) -> Path:
    """The weights file of a bundled model (FerkitError if the name is unknown or the file absent)."""
    if name not in BUNDLED:
        raise FerkitError(f"unknown bundled model {name!r}; bundled: {', '.join(BUNDLED)}")
    path = BUNDLED[name].path
    if not path.is_file():
        raise FerkitError(f"bundled model {name!r} is missing from this installation ({path}); reinstall ferkit "
                          "or pass a model (run folder, .safetensors or .onnx)")
    return path


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """None -> the default bundled model; a bundled model's name -> its file; anything else as given."""
    if model is None:
        return bundled_path(DEFAULT_MODEL)
    if isinstance(model, str) and model in BUNDLED and not Path(model).exists():
        return bundled_path(model)
    return Path(model)


def is_model_path(text: str) -> bool:
    """Does a command-line word name a model (rather than an image, video or folder of images)?"""
    from .data import IMAGE_EXTENSIONS
    from .predict.runner import VIDEO_EXTENSIONS

    p = Path(text)
    if text in BUNDLED and not p.exists():
        return True
    if p.is_dir():   # a run folder (a GAN's too, so that predict says it is the wrong kind)
        return any((p / name).is_file() for name in ("best.safetensors", "last.safetensors", "generator.safetensors"))
    if not p.exists():   # a missing path that is not an image or video name: a mistyped model, say so
        return p.suffix.lower() not in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    return p.suffix.lower() in (".safetensors", ".onnx")


def sample_photo() -> Path:
    """A real portrait photo that ships inside an installed registry package (matplotlib's sample
    data: Grace Hopper, public domain), for demos and tests without downloads."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        raise FerkitError(f"matplotlib's sample photo {path} is missing from this installation")
    return path
