"""Datasets: class folders (or manifests) of face images -> uint8 arrays in memory.

A dataset source is either a folder with one sub-folder per class, or a manifest CSV with
columns ``path,class[,source]`` (paths relative to the manifest), as written by ``ferkit mix``.
Every image goes through :func:`decode_image` and :func:`preprocess_gray` — the one decoder and
resizer shared by training, evaluation, prediction, the study and main.py — and is kept as uint8;
scaling and normalisation happen per batch, from the model's input contract. Decoded datasets
are cached on disk, keyed on the file list, sizes,
mtimes and image size, so a second run on the same folder starts in seconds; an entry is used only
after its dtype, shape, indices and content hash check out (else it is rebuilt, with a note).

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
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .choices import LABEL_MODES
from .console import log, progress_bar
from .errors import FerkitError
from .failures import check_fits
from .files import atomic_path, cache_dir, write_json
from .labels import EXPRESSIONS, REFERENCE_CLASSES, canonical_class
from .votes import FERPLUS_COLUMNS, VOTE_CLASSES, check_votes, one_hot, vote_targets  # noqa: F401  (re-exported)

__all__ = ["IMAGE_EXTENSIONS", "LABEL_MODES", "VOTE_CLASSES", "ImageSet", "Source", "bgr_to_gray", "cache_dir",
           "decode_gray", "decode_image", "VIDEO_EXTENSIONS",
           "default_classes", "find_files", "load_dataset", "load_face", "log", "max_pixels", "preprocess_gray",
           "scan_source", "vote_targets"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Video files ``ferkit predict`` reads frame by frame (here, not in predict/, so that bundled.py
#: can tell a model's name from an input's without importing the prediction code).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
_CACHE_VERSION = 3   # 2: EXIF orientation applied, 16-bit scaled by its bit depth; 3: checked entries

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
_OPEN_LOCK = threading.Lock()


def open_image(source):
    """``PIL.Image.open`` without Pillow's DecompressionBombWarning (ferkit applies its own pixel
    limit, :func:`max_pixels`, with a clear message). ``warnings.catch_warnings`` changes process-wide
    state and is not thread-safe: with several decoding threads one thread's exit could restore the
    filters while another opens a large image, and the warning would leak. So the opens (a header
    read: fast; the decoding itself stays parallel) take one lock."""
    import warnings

    from PIL import Image

    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(source)


def decode_image(data: bytes | str | os.PathLike, color: bool = False) -> np.ndarray:
    """THE decoder: an image file (path or bytes) -> uint8 gray (H, W), or BGR (H, W, 3) with ``color``.

    Used by training, evaluation, prediction, the study and main.py alike. It applies the EXIF
    orientation (phone photos stand upright), composites transparency on black, converts palette,
    CMYK and 16-bit images (scaled by their bit depth, not clipped), and refuses images above
    :func:`max_pixels` before decoding them. Pillow is used because it raises on truncated files
    instead of returning half an image.

    Raises ValueError with a short reason when the file is not a usable image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    limit = max_pixels()
    try:
        if not isinstance(data, bytes) and not _is_regular_file(data):   # a FIFO or device would block
            raise ValueError("not a regular file (a FIFO, socket or device); not read")
        with open_image(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
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


def _is_regular_file(path) -> bool:
    """True for a regular file (or a link to one); also for a folder or a path that cannot be
    stat'ed, which opening then explains. False for a FIFO, socket or device: never opened."""
    import stat

    if not isinstance(path, (str, os.PathLike)):
        return True                               # a file object: the caller opened it
    try:
        mode = os.stat(path).st_mode
        return stat.S_ISREG(mode) or stat.S_ISDIR(mode)
    except (OSError, ValueError):
        return True


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
    votes: np.ndarray | None = None  # (N, len(VOTE_CLASSES)) vote counts or probabilities, for vote-label data
    dropped: dict[str, int] = field(default_factory=dict)  # faces a label protocol dropped, by reason


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


def find_files(folder: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
               skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """Files under ``folder`` (recursive, sorted, hidden names skipped, symlinked folders not
    followed, so a link loop cannot trap the walk) whose names end in ``extensions``.

    The walk keeps its own stack, so no folder depth is too deep for it. Only regular files (or
    links to them) are returned: a FIFO, socket or device with an image's name would block or
    never end when read, so it is skipped, as is an unreadable sub-folder; each is appended to
    ``skipped`` as (path, reason), or, when no list is given, named in one note on stderr."""
    import stat

    out: list[Path] = []
    odd: list[tuple[str, str]] = []
    stack = [Path(folder)]
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            odd.append((str(here), f"cannot read folder ({exc.strerror or exc})"))
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(Path(e.path))
                continue
            if not e.name.lower().endswith(extensions):
                continue
            try:
                mode = e.stat().st_mode           # follows a link: a link to a FIFO is a FIFO
            except OSError:
                mode = None                       # a broken link: decoding says so
            if mode is not None and stat.S_ISDIR(mode):
                continue                          # a link to a folder: not followed
            if mode is not None and not stat.S_ISREG(mode):
                odd.append((e.path, "not a regular file (a FIFO, socket or device); not read"))
                continue
            out.append(Path(e.path))
        stack.extend(reversed(subdirs))           # depth first, in name order, as os.walk walks
    if skipped is not None:
        skipped.extend(odd)
    elif odd:
        shown = "; ".join(f"{p} ({why})" for p, why in odd[:5]) + (" ..." if len(odd) > 5 else "")
        one = len(odd) == 1
        log(f"note: {folder}: skipped {len(odd)} entr{'y' if one else 'ies'} without reading "
            f"{'it' if one else 'them'}: {shown}")
    return out


def _read_manifest(path: Path) -> Source:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FerkitError(f"cannot read manifest {path}: {exc}") from None
    if rows and "path" in rows[0] and "class" not in rows[0]:
        columns = {canonical_class(k): k for k in rows[0] if k and canonical_class(k) is not None}
        if columns:
            return _read_vote_manifest(path, rows, columns)
    if not rows or not {"path", "class"} <= set(rows[0]):
        raise FerkitError(f"manifest {path} needs a header with 'path' and 'class' columns (or 'path' and one "
                          "vote column per class) and at least one row")
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


# ----------------------------------------------------------------------------- vote labels (FER+)
# Readers of vote-label sources; what votes mean (protocols, distributions) is ferkit.votes.
def _read_ferplus(root: Path) -> Source:
    """A FER+ folder as Microsoft lays it out: images plus ``label.csv`` (no header; file name, face
    box, then 10 vote counts). Every row is checked; a bad one is one FerkitError naming file and row."""
    path = root / "label.csv"
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FerkitError(f"cannot read {path}: {exc}") from None
    files, votes = [], []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows, start=1):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != 12:
            raise FerkitError(f"{path} row {i}: expected 12 columns (file name, face box, 10 vote counts), "
                              f"got {len(row)}")
        counts = check_votes(row[2:], f"{path} row {i}", f"face {row[0]}")
        name = row[0].strip()
        f = root / name
        # label.csv names the images of its own folder: a row reaching elsewhere (../test/x.png, an
        # absolute path, a link out) would mix another split's faces into this one
        if Path(os.path.realpath(root)) not in Path(os.path.realpath(f)).parents:
            raise FerkitError(f"{path} row {i}: image {name} lies outside {root}; label.csv may only name "
                              "images of its own folder")
        if name in seen:   # the same face twice would count its votes twice: refused, not guessed at
            raise FerkitError(f"{path} row {i}: image {name} is listed twice (first in row {seen[name]}); "
                              "each image may have one row")
        seen[name] = i
        if not f.is_file():
            raise FerkitError(f"{path} row {i}: image {f} does not exist")
        files.append(f)
        votes.append(counts)
    if not files:
        raise FerkitError(f"{path} has no rows")
    v = np.asarray(votes, dtype=np.float64)
    return Source(root, files, [VOTE_CLASSES[j] for j in v[:, :8].argmax(1)], list(VOTE_CLASSES), votes=v)


def _read_vote_manifest(path: Path, rows: list[dict], columns: dict[str, str]) -> Source:
    """A manifest with ``path`` and one vote (or probability) column per class, e.g. written from
    another dataset's annotations: ``path,angry,happy,neutral``."""
    files, votes = [], []
    for i, row in enumerate(rows, start=2):
        v = check_votes([row.get(columns[c], "") or 0.0 if c in columns else 0.0 for c in VOTE_CLASSES],
                   f"manifest {path} line {i}", row["path"])
        p = Path(row["path"])
        files.append(p if p.is_absolute() else path.parent / p)
        votes.append(v + [0.0, 0.0])
    arr = np.asarray(votes, dtype=np.float64)
    return Source(path, files, [VOTE_CLASSES[j] for j in arr[:, :8].argmax(1)],
                  [c for c in EXPRESSIONS if c in columns], votes=arr)


def scan_source(path: str | os.PathLike, classes: tuple[str, ...] | None = None, role: str = "data",
                hint: str = "", labels: str = "majority") -> Source:
    """List the image files of a class-folder tree or manifest, restricted to ``classes``
    (``hint`` ends the message when a requested class is absent).

    Raises FerkitError for a missing or empty source, or a requested class that is absent or empty.
    """
    root = Path(path)
    if not root.exists():
        raise FerkitError(f"{role} path {root} does not exist")
    if not (root.is_file() or root.is_dir()):
        raise FerkitError(f"{role} path {root} is not a regular file or folder (a FIFO, socket or device)")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise FerkitError(f"{role} path {root} is a file; expected a folder of class folders or a .csv manifest")
        src = _read_manifest(root)
    elif (root / "label.csv").is_file():
        src = _read_ferplus(root)
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
        if src.votes is not None:
            return _vote_protocol(src, classes, labels)
        keep = [i for i, lab in enumerate(src.labels) if lab in classes]
        src.files = [src.files[i] for i in keep]
        src.labels = [src.labels[i] for i in keep]
    if not src.files:
        raise FerkitError(f"{role} {root} contains no images")
    return src


def _vote_protocol(src: Source, classes: tuple[str, ...], labels: str) -> Source:
    """Vote-label data seen through a label protocol: ``majority`` keeps the faces (and the hard
    labels) of the FER+ protocol, which is what consumers of class labels (mix, study) read;
    ``soft`` keeps every face for :func:`load_dataset` to turn into distributions."""
    if labels == "soft":
        return src
    keep, targets, src.dropped = vote_targets(src.votes, classes, "majority")
    src.files = [src.files[i] for i in keep]
    src.labels = [classes[i] for i in targets.argmax(1)]
    src.votes = src.votes[keep]
    return src


def default_classes(found: list[str], votes: bool = False) -> tuple[str, ...]:
    """The default class set: the reference's six, those of them that the training data has; for
    vote-label data (FER+), every class it has votes for (FER+: the seven plus contempt)."""
    if votes:
        return tuple(c for c in EXPRESSIONS if c in found)
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
    #: float32 (N, len(classes)) label distributions of vote-label data in ``soft`` mode, else None
    #: (the labels are then the targets, one-hot); ``labels`` is always their argmax.
    targets: np.ndarray | None = None
    protocol: str = ""    # vote-label data: the label protocol it was loaded with (majority | soft)
    #: vote-label data in ``soft`` mode: each face's majority-protocol class (index into ``classes``),
    #: -1 where that protocol drops the face; else None (``labels`` are then the hard labels)
    majority: np.ndarray | None = None
    #: several training sources (:mod:`ferkit.train.domains`): each face's source index, and each
    #: source's sampling weight; else None and ()
    domain: np.ndarray | None = None
    domain_weights: tuple[float, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    def label_distributions(self) -> np.ndarray:
        """float32 (N, len(classes)): the vote distributions (``targets``), or the hard labels one-hot:
        what training takes its loss against (see :mod:`ferkit.votes`)."""
        return self.targets if self.targets is not None else one_hot(self.labels, len(self.classes))

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}

    def oversampled(self, extra: dict[str, int]) -> "ImageSet":
        """This set with ``extra[c]`` more copies of every face of class ``c`` appended (for vote
        labels in ``soft`` mode, the faces whose majority-protocol class is ``c``: a face whose
        votes are split is not counted as any class). Classes not in ``extra`` are left as they are."""
        unknown = [c for c in extra if c not in self.classes]
        if unknown:
            raise FerkitError(f"--oversample names {', '.join(unknown)}, which the training classes "
                              f"({', '.join(self.classes)}) do not include")
        hard = self.majority if self.majority is not None else self.labels
        idx = [np.arange(len(self))]
        for c, n in extra.items():
            faces = np.flatnonzero(hard == self.classes.index(c))
            if not len(faces):
                raise FerkitError(f"--oversample {c}={n}: the training data has no face of class {c}"
                                  + (" (by the majority protocol)" if self.majority is not None else ""))
            idx += [faces] * n
        idx = np.concatenate(idx)
        from .failures import check_fits  # the copies are real arrays: refuse what cannot fit, naming why

        check_fits(len(idx) * self.images[:1].nbytes, f"--oversample ({len(idx)} faces after copying)",
                   "--oversample sets it: ask for fewer copies")
        targets, majority, domain = (None if a is None else a[idx]
                                     for a in (self.targets, self.majority, self.domain))
        return ImageSet(self.images[idx], self.labels[idx], [self.paths[i] for i in idx], self.classes,
                        list(self.skipped), targets, self.protocol, majority, domain, self.domain_weights)


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

    check_fits(len(files) * image_size * image_size, f"decoding {len(files):,} images at {image_size}x{image_size} px",
               "use a smaller --image-size or fewer images")
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


def _cache_digest(images: np.ndarray, ok: list[int], bad: list) -> str:
    """SHA-256 of the decoded pixels and of which files they are: what a cache entry must reproduce."""
    h = hashlib.sha256(f"{images.dtype.str}|{images.shape}|".encode())
    h.update(memoryview(np.ascontiguousarray(images)).cast("B"))
    h.update(json.dumps([list(ok), [list(b) for b in bad]]).encode())
    return h.hexdigest()


def _check_cached(npy: Path, meta: dict, n: int, image_size: int | None) -> tuple[np.ndarray, list, list]:
    """Load a cache entry, checking it before anything is trusted: the record's version and count,
    the array's dtype and shape (read from its header, before the pixels are), the index lists, and
    the content hash of pixels and indices. Raises ValueError with the failed check."""
    from numpy.lib import format as npy_format

    if not isinstance(meta, dict) or meta.get("version") != _CACHE_VERSION:
        raise ValueError("unknown cache record")
    ok, bad = meta.get("ok"), meta.get("bad")
    if not isinstance(ok, list) or not isinstance(bad, list) or meta.get("n") != n:
        raise ValueError("the record does not match the file list")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ok) or ok != sorted(set(ok)) \
            or (ok and not 0 <= ok[0] <= ok[-1] < n):
        raise ValueError("bad image indices")
    if not all(isinstance(b, list) and len(b) == 2 and all(isinstance(s, str) for s in b) for b in bad) \
            or len(ok) + len(bad) != n:
        raise ValueError("bad list of skipped files")
    with open(npy, "rb") as fh:
        version = npy_format.read_magic(fh)
        read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        side = image_size or (shape[1] if len(shape) == 3 else -1)
        if dtype != np.uint8 or fortran or shape != (n, side, side):
            raise ValueError(f"array is {dtype} {shape}, expected uint8 {(n, side, side)}")
        images = np.fromfile(fh, dtype=np.uint8, count=n * side * side)
    if images.size != n * side * side:
        raise ValueError("array is truncated")
    images = images.reshape(shape)
    if meta.get("sha256") != _cache_digest(images, ok, bad):
        raise ValueError("content hash differs")
    return images, ok, [tuple(b) for b in bad]


def _load_cached(key: str, n: int, image_size: int | None = None):
    """A checked cache entry (images, ok, bad), or None: absent, or failing a check (then with a
    note, and the caller decodes again and rewrites it)."""
    base = cache_dir() / "datasets" / key
    npy, meta_path = Path(f"{base}.npy"), Path(f"{base}.json")
    if not (npy.is_file() and meta_path.is_file()):
        return None
    try:
        return _check_cached(npy, json.loads(meta_path.read_text()), n, image_size)
    except (OSError, ValueError, TypeError, KeyError, OverflowError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:100]
        log(f"note: the decoded-dataset cache {npy} failed its check ({why}); decoding the images again")
        return None


def _store_cached(key: str, images: np.ndarray, ok: list[int], bad: list) -> None:
    base = cache_dir() / "datasets" / key
    ok, bad = [int(i) for i in ok], [[str(p), str(w)] for p, w in bad]
    meta = {"version": _CACHE_VERSION, "n": len(ok) + len(bad), "dtype": "uint8", "shape": list(images.shape),
            "ok": ok, "bad": bad, "sha256": _cache_digest(images, ok, bad)}
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        write_json(f"{base}.json", meta)   # either file alone, or a pair from two writers, fails the hash
        with atomic_path(f"{base}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, images, allow_pickle=False)
    except (OSError, FerkitError) as exc:  # a read-only home or a full disk must not stop training
        log(f"note: could not write the dataset cache ({exc}); continuing without it")


def load_dataset(source: str | os.PathLike, classes: tuple[str, ...] | None = None, image_size: int = 64,
                 strict: bool = False, use_cache: bool = True, progress: bool = True,
                 role: str = "data", hint: str = "", labels: str = "majority") -> ImageSet:
    """Decode a dataset source into memory.

    Args:
        source: class-folder tree or manifest CSV.
        classes: canonical class names, in model order; None = :func:`default_classes`.
        image_size: side of the square model input.
        strict: raise on the first undecodable file instead of skipping it (skips are listed).
        use_cache: read/write the decoded-dataset cache.
        role: word used in error messages ("training data", "test data", ...).
        hint: what to do when a requested class is absent (ends that error message).
        labels: for vote-label data (a FER+ folder with ``label.csv``, or a manifest with one column
            per class): ``majority`` (the FER+ protocol; hard labels) or ``soft`` (vote distributions
            in ``targets``). See :func:`vote_targets`. Plain class folders have hard labels only.
    """
    if labels not in LABEL_MODES:
        raise FerkitError(f"unknown label mode {labels!r}; choose from {', '.join(LABEL_MODES)}")
    src = scan_source(source, classes, role, hint, labels)
    if labels == "soft" and src.votes is None:
        raise FerkitError(f"--labels soft needs vote labels, and {role} {src.root} has one class per image; give a "
                          "FER+ folder (images + label.csv) or a manifest with one vote column per class")
    if classes is None:
        classes = default_classes(src.found_classes, votes=src.votes is not None)
        src = scan_source(source, classes, role, labels=labels)
    if src.ignored:
        log(f"note: {role} {src.root}: ignoring classes not selected: {', '.join(src.ignored)}")
    key = _cache_key(src.files, image_size)
    cached = _load_cached(key, len(src.files), image_size) if use_cache else None
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
    if src.votes is not None:
        return _vote_set(src, images, ok, bad, tuple(classes), labels, role)
    index = {c: i for i, c in enumerate(classes)}
    ok_arr = np.asarray(ok, dtype=np.int64)
    return ImageSet(images=images[ok_arr] if len(ok) != len(images) else images,
                    labels=np.asarray([index[src.labels[i]] for i in ok], dtype=np.int64),
                    paths=[str(src.files[i]) for i in ok], classes=tuple(classes), skipped=list(bad))


def _vote_set(src: Source, images: np.ndarray, ok: list[int], bad: list, classes: tuple[str, ...], mode: str,
              role: str) -> ImageSet:
    keep, targets, dropped = vote_targets(src.votes[ok], classes, mode)
    if not len(keep):
        raise FerkitError(f"{role} {src.root}: no face is left by the {mode} label protocol for classes "
                          f"{', '.join(classes)}")
    idx = np.asarray(ok, dtype=np.int64)[keep]
    dropped = {why: src.dropped.get(why, 0) + dropped.get(why, 0) for why in {**src.dropped, **dropped}}
    note = "; ".join(f"{n} {why}" for why, n in dropped.items() if n)
    log(f"{role} {src.root}: vote labels, {mode} protocol: {len(keep)} of {len(ok) + sum(src.dropped.values())} "
        "faces kept"
        + (f" (dropped: {note})" if note else ""))
    majority = None
    if mode == "soft":   # which faces the majority protocol would keep, and as what (for --oversample)
        kept, hard, _ = vote_targets(src.votes[ok][keep], classes, "majority")
        majority = np.full(len(keep), -1, np.int64)
        majority[kept] = hard.argmax(1)
    return ImageSet(images=images[idx], labels=targets.argmax(1).astype(np.int64),
                    paths=[str(src.files[i]) for i in idx], classes=classes, skipped=list(bad),
                    targets=targets if mode == "soft" else None, protocol=mode, majority=majority)
