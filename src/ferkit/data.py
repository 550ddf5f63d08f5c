"""Datasets: class folders (or manifests) of face images -> uint8 arrays in memory.

A dataset source is either a folder with one sub-folder per class, or a manifest CSV with
columns ``path,class[,source]`` (paths relative to the manifest), as written by ``ferkit mix``.
Every image goes through :func:`decode_image` and :func:`preprocess_gray` — the one decoder and
resizer shared by training, evaluation, prediction, the study and main.py — and is kept as uint8;
scaling and normalisation happen per batch, from the model's input contract. Decoded datasets
are cached on disk, keyed on the file list, sizes,
mtimes and image size, so a second run on the same folder starts in seconds.

Example::

    from ferkit.data import load_dataset
    ds = load_dataset("data/train", classes=("angry", "happy"), image_size=64)
    ds.images.shape   # (N, 64, 64) uint8
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .console import log, progress_bar
from .errors import FerkitError
from .labels import EXPRESSIONS, REFERENCE_CLASSES, canonical_class

__all__ = ["IMAGE_EXTENSIONS", "ImageSet", "Source", "bgr_to_gray", "cache_dir", "decode_gray", "decode_image",
           "default_classes", "find_files", "load_dataset", "load_face", "log", "max_pixels", "preprocess_gray",
           "scan_source"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_CACHE_VERSION = 2   # 2: EXIF orientation applied, 16-bit scaled by its bit depth

#: Images larger than this many pixels are refused with a reason (not decoded): $FERKIT_MAX_PIXELS,
#: at most Pillow's own decompression-bomb limit (about 179 megapixels).
DEFAULT_MAX_PIXELS = 100_000_000


def max_pixels() -> int:
    from PIL import Image

    try:
        wanted = int(os.environ.get("FERKIT_MAX_PIXELS", DEFAULT_MAX_PIXELS))
    except ValueError:
        wanted = DEFAULT_MAX_PIXELS
    bomb = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else wanted
    return max(1, min(wanted, bomb))


# ----------------------------------------------------------------------------- decoding
def decode_image(data: bytes | str | os.PathLike, color: bool = False) -> np.ndarray:
    """THE decoder: an image file (path or bytes) -> uint8 gray (H, W), or BGR (H, W, 3) with ``color``.

    Used by training, evaluation, prediction, the study and main.py alike. It applies the EXIF
    orientation (phone photos stand upright), composites transparency on black, converts palette,
    CMYK and 16-bit images (scaled by their bit depth, not clipped), and refuses images above
    :func:`max_pixels` before decoding them. Pillow is used because it raises on truncated files
    instead of returning half an image.

    Raises ValueError with a short reason when the file is not a usable image.
    """
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    limit = max_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
                w, h = im.size
                if w * h > limit:
                    raise ValueError(f"image too large: {w}x{h} = {w * h / 1e6:.0f} megapixels, above the limit "
                                     f"of {limit / 1e6:.0f} (FERKIT_MAX_PIXELS)")
                im.load()
                im = _normalise_mode(ImageOps.exif_transpose(im))
                if color:
                    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8)[:, :, ::-1])
                return np.asarray(im.convert("L"), dtype=np.uint8)
    except Image.DecompressionBombError:
        raise ValueError(f"image too large: above the limit of {limit / 1e6:.0f} megapixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, TypeError) as exc:
        raise ValueError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def _normalise_mode(im):
    """Any Pillow mode -> L, RGB (8-bit per channel): alpha on black, 16/32-bit and float scaled."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im).convert("RGB")
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else (1.0 if im.mode == "F" and arr.max() <= 1 else arr.max())
        return Image.fromarray(np.clip(arr / max(top, 1e-12) * 255 + 0.5, 0, 255).astype(np.uint8))
    if im.mode in ("L", "RGB"):
        return im
    return im.convert("RGB")   # P, CMYK, YCbCr, LAB, HSV, 1, ...


def decode_gray(data: bytes | str | os.PathLike) -> np.ndarray:
    """:func:`decode_image` to uint8 gray."""
    return decode_image(data)


def bgr_to_gray(frame: np.ndarray) -> np.ndarray:
    """Convert an OpenCV frame (BGR, BGRA or gray) to uint8 gray with the same luma weights."""
    import cv2

    if frame.ndim == 2:
        return frame
    code = cv2.COLOR_BGRA2GRAY if frame.shape[2] == 4 else cv2.COLOR_BGR2GRAY
    return cv2.cvtColor(frame, code)


def preprocess_gray(gray: np.ndarray, image_size: int) -> np.ndarray:
    """THE resizing step: uint8 gray face of any size -> uint8 image_size x image_size.

    Used by training, evaluation and prediction alike (scaling and normalisation follow the
    model's input contract, :class:`ferkit.models.InputSpec`).
    """
    import cv2

    h, w = gray.shape[:2]
    if (h, w) == (image_size, image_size):
        return np.ascontiguousarray(gray, dtype=np.uint8)
    interp = cv2.INTER_AREA if h >= image_size and w >= image_size else cv2.INTER_LINEAR
    return cv2.resize(gray, (image_size, image_size), interpolation=interp)


def load_face(path: str | os.PathLike, image_size: int) -> np.ndarray:
    """Decode one image file and preprocess it (raises ValueError for undecodable files)."""
    return preprocess_gray(decode_image(path), image_size)


# ----------------------------------------------------------------------------- sources
@dataclass
class Source:
    """The files of a dataset source, before decoding."""

    root: Path
    files: list[Path]
    labels: list[str]           # canonical class name per file
    found_classes: list[str]    # canonical classes present in the source
    ignored: list[str] = field(default_factory=list)  # folders/classes not used, for the log


def _class_folders(root: Path) -> dict[str, Path]:
    """Map canonical class -> folder; folders that are not expression names are reported."""
    folders: dict[str, Path] = {}
    unknown = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        canon = canonical_class(entry.name)
        if canon is None:
            unknown.append(entry.name)
        elif canon in folders:
            raise FerkitError(f"{root}: folders {folders[canon].name!r} and {entry.name!r} both mean {canon!r}")
        else:
            folders[canon] = entry
    if unknown:
        log(f"note: {root}: ignoring folders that are not expression classes: {', '.join(unknown)}")
    return folders


def find_files(folder: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    """Files under ``folder`` (recursive, sorted, hidden names skipped, symlinked folders not
    followed, so a link loop cannot trap the walk) whose names end in ``extensions``."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames)
                   if f.lower().endswith(extensions) and not f.startswith("."))
    return out


def _read_manifest(path: Path) -> Source:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FerkitError(f"cannot read manifest {path}: {exc}") from None
    if not rows or not {"path", "class"} <= set(rows[0]):
        raise FerkitError(f"manifest {path} needs a header with 'path' and 'class' columns and at least one row")
    files, labels = [], []
    for i, row in enumerate(rows, start=2):
        canon = canonical_class(row["class"] or "")
        if canon is None:
            raise FerkitError(f"manifest {path} line {i}: unknown class {row['class']!r}")
        p = Path(row["path"])
        files.append(p if p.is_absolute() else path.parent / p)
        labels.append(canon)
    found = [c for c in EXPRESSIONS if c in set(labels)]
    return Source(path, files, labels, found)


def scan_source(path: str | os.PathLike, classes: tuple[str, ...] | None = None, role: str = "data",
                hint: str = "") -> Source:
    """List the image files of a class-folder tree or manifest, restricted to ``classes``
    (``hint`` ends the message when a requested class is absent).

    Raises FerkitError for a missing or empty source, or a requested class that is absent or empty.
    """
    root = Path(path)
    if not root.exists():
        raise FerkitError(f"{role} path {root} does not exist")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise FerkitError(f"{role} path {root} is a file; expected a folder of class folders or a .csv manifest")
        src = _read_manifest(root)
    else:
        folders = _class_folders(root)
        if not folders:
            raise FerkitError(f"{role} folder {root} has no class folders (expected e.g. {root}/happy/*.png)")
        files, labels = [], []
        wanted = folders if classes is None else {c: folders[c] for c in classes if c in folders}
        for canon, folder in wanted.items():
            imgs = find_files(folder)
            if not imgs:
                raise FerkitError(f"{role} class folder {folder} has no images")
            files += imgs
            labels += [canon] * len(imgs)
        src = Source(root, files, labels, [c for c in EXPRESSIONS if c in folders])
    if classes is not None:
        missing = [c for c in classes if c not in src.found_classes]
        if missing:
            raise FerkitError(f"{role} {root} has no images of class {', '.join(missing)} "
                              f"(it has: {', '.join(src.found_classes) or 'none'}; wanted: {', '.join(classes)})"
                              + (f"; {hint}" if hint else ""))
        src.ignored = [c for c in src.found_classes if c not in classes]
        keep = [i for i, lab in enumerate(src.labels) if lab in classes]
        src.files = [src.files[i] for i in keep]
        src.labels = [src.labels[i] for i in keep]
    if not src.files:
        raise FerkitError(f"{role} {root} contains no images")
    return src


def default_classes(found: list[str]) -> tuple[str, ...]:
    """The default class set: the reference's six, those of them that the training data has."""
    chosen = tuple(c for c in REFERENCE_CLASSES if c in found)
    if len(chosen) < 2:
        raise FerkitError(f"found classes {', '.join(found) or 'none'}: need at least two of the reference six "
                          f"({', '.join(REFERENCE_CLASSES)}), or choose with --classes")
    return chosen


# ----------------------------------------------------------------------------- datasets
@dataclass
class ImageSet:
    """A decoded dataset: uint8 images (N, H, W), int64 labels indexing ``classes``."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    classes: tuple[str, ...]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


def cache_dir() -> Path:
    """Where decoded datasets are cached: $FERKIT_CACHE, else $XDG_CACHE_HOME/ferkit, else ~/.cache/ferkit."""
    env = os.environ.get("FERKIT_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ferkit"


def _cache_key(files: list[Path], image_size: int) -> str:
    h = hashlib.sha256(f"v{_CACHE_VERSION}|{image_size}".encode())
    for f in files:
        try:
            st = f.stat()
            h.update(f"|{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"|{f}|missing".encode())
    return h.hexdigest()[:32]


def _decode_all(files: list[Path], image_size: int,
                progress: bool) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    def one(f: Path):
        try:
            return load_face(f, image_size), None
        except ValueError as exc:
            return None, str(exc)
        except OSError as exc:
            return None, exc.strerror or str(exc)

    images = np.zeros((len(files), image_size, image_size), np.uint8)
    ok, bad = [], []
    # Pillow and OpenCV release the GIL while decoding/resizing, so threads scale here.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(one, files, chunksize=64)
        for i, (img, err) in enumerate(progress_bar(results, enabled=progress and len(files) >= 500,
                                                    total=len(files), desc="decode", unit="img", leave=False)):
            if img is None:
                bad.append((str(files[i]), err))
            else:
                images[i] = img
                ok.append(i)
    return images, ok, bad


def _load_cached(key: str, n: int):
    base = cache_dir() / "datasets" / key
    try:
        images = np.load(f"{base}.npy", allow_pickle=False)
        meta = json.loads(Path(f"{base}.json").read_text())
        if images.shape[0] != n:
            return None
        return images, meta["ok"], [tuple(b) for b in meta["bad"]]
    except (OSError, ValueError, KeyError):
        return None


def _store_cached(key: str, images: np.ndarray, ok: list[int], bad: list) -> None:
    from .files import atomic_path, write_json

    base = cache_dir() / "datasets" / key
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        write_json(f"{base}.json", {"ok": ok, "bad": bad})  # json first: a reader needs both, and checks the count
        with atomic_path(f"{base}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, images, allow_pickle=False)
    except (OSError, FerkitError) as exc:  # a read-only home or a full disk must not stop training
        log(f"note: could not write the dataset cache ({exc}); continuing without it")


def load_dataset(source: str | os.PathLike, classes: tuple[str, ...] | None = None, image_size: int = 64,
                 strict: bool = False, use_cache: bool = True, progress: bool = True,
                 role: str = "data", hint: str = "") -> ImageSet:
    """Decode a dataset source into memory.

    Args:
        source: class-folder tree or manifest CSV.
        classes: canonical class names, in model order; None = :func:`default_classes`.
        image_size: side of the square model input.
        strict: raise on the first undecodable file instead of skipping it (skips are listed).
        use_cache: read/write the decoded-dataset cache.
        role: word used in error messages ("training data", "test data", ...).
        hint: what to do when a requested class is absent (ends that error message).
    """
    src = scan_source(source, classes, role, hint)
    if classes is None:
        classes = default_classes(src.found_classes)
        src = scan_source(source, classes, role)
    if src.ignored:
        log(f"note: {role} {src.root}: ignoring classes not selected: {', '.join(src.ignored)}")
    key = _cache_key(src.files, image_size)
    cached = _load_cached(key, len(src.files)) if use_cache else None
    if cached is None:
        cached = _decode_all(src.files, image_size, progress)
        if use_cache:
            _store_cached(key, *cached)
    images, ok, bad = cached
    if bad:
        if strict:
            path, why = bad[0]
            raise FerkitError(f"cannot decode {path}: {why} ({len(bad)} bad file(s); drop --strict to skip them)")
        shown = "; ".join(f"{p} ({w})" for p, w in bad[:5])
        log(f"warning: {role}: skipped {len(bad)} undecodable file(s): {shown}{' ...' if len(bad) > 5 else ''}")
    if not ok:
        raise FerkitError(f"{role} {src.root}: none of the {len(src.files)} image files could be decoded")
    index = {c: i for i, c in enumerate(classes)}
    ok_arr = np.asarray(ok, dtype=np.int64)
    return ImageSet(images=images[ok_arr] if len(ok) != len(images) else images,
                    labels=np.asarray([index[src.labels[i]] for i in ok], dtype=np.int64),
                    paths=[str(src.files[i]) for i in ok], classes=tuple(classes), skipped=list(bad))
