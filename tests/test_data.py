import os
import time

import numpy as np
import pytest
from conftest import make_folder
from PIL import Image

from ferkit import data
from ferkit.errors import FerkitError
from ferkit.labels import REFERENCE_CLASSES, canonical_class, parse_classes


def test_aliases_map_fer_and_reference_names():
    for fer, ref in [("disgust", "disgusted"), ("fear", "fearful"), ("surprise", "surprised"),
                     ("anger", "angry"), ("happiness", "happy"), ("sadness", "sad"), ("Neutral", "neutral")]:
        assert canonical_class(fer) == ref
    assert canonical_class("banana") is None
    assert parse_classes(None) == REFERENCE_CLASSES
    assert parse_classes("happy,fear") == ("happy", "fearful")
    with pytest.raises(FerkitError, match="unknown class"):
        parse_classes("happy,banana")
    with pytest.raises(FerkitError, match="twice"):
        parse_classes("happy,happiness")


@pytest.mark.parametrize("ext,mode", [(".jpg", "RGB"), (".jpeg", "L"), (".png", "RGBA"), (".bmp", "RGB"),
                                      (".tif", "L"), (".webp", "RGB"), (".png", "LA"), (".png", "I;16")])
def test_any_format_becomes_gray_square_in_unit_range(tmp_path, ext, mode):
    rng = np.random.default_rng(0)
    shape = (37, 53) if mode in ("L", "I;16") else (37, 53, {"RGB": 3, "RGBA": 4, "LA": 2}[mode])
    arr = rng.integers(0, 255, shape).astype(np.uint16 if mode == "I;16" else np.uint8)
    path = tmp_path / f"img{ext}"
    Image.fromarray(arr, mode=mode if mode not in ("L", "I;16") else None).save(path)
    face = data.load_face(path, 64)
    assert face.shape == (64, 64) and face.dtype == np.uint8
    from ferkit.models import InputSpec
    x = InputSpec(64).to_tensor(face[None])
    assert x.shape == (1, 1, 64, 64) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert float(x.max()) > 0  # not blank


def test_colour_uses_luma_and_alpha_composites_on_black(tmp_path):
    Image.new("RGB", (10, 10), (255, 0, 0)).save(tmp_path / "red.png")
    assert data.decode_gray(tmp_path / "red.png")[0, 0] == 76  # 0.299 * 255
    Image.new("RGBA", (10, 10), (255, 255, 255, 0)).save(tmp_path / "clear.png")
    assert data.decode_gray(tmp_path / "clear.png").max() == 0


def test_folder_loading_labels_and_ignored_classes(tmp_path, capsys):
    root = make_folder(tmp_path / "d", ["angry", "disgust", "neutral", "happy"], 3)
    (root / "notes").mkdir()
    (root / "happy" / "readme.txt").write_text("not an image")
    ds = data.load_dataset(root, image_size=32)
    assert ds.classes == ("angry", "disgusted", "happy")  # reference six present, reference order
    assert ds.images.shape == (9, 32, 32) and ds.images.dtype == np.uint8
    assert ds.class_counts() == {"angry": 3, "disgusted": 3, "happy": 3}
    err = capsys.readouterr().err
    assert "neutral" in err and "notes" in err
    ds2 = data.load_dataset(root, classes=("neutral", "happy"), image_size=32)
    assert ds2.classes == ("neutral", "happy") and list(np.bincount(ds2.labels)) == [3, 3]


def test_corrupt_and_truncated_files_are_skipped_and_listed_or_fatal_with_strict(tmp_path, capsys):
    root = make_folder(tmp_path / "d", ["angry", "happy"], 4, ext=".jpg")
    (root / "angry" / "corrupt.jpg").write_bytes(b"not really a jpeg")
    good = (root / "happy" / "happy_000.jpg").read_bytes()
    (root / "happy" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    ds = data.load_dataset(root, image_size=32)
    assert len(ds) == 8 and len(ds.skipped) == 2
    assert {os.path.basename(p) for p, _ in ds.skipped} == {"corrupt.jpg", "truncated.jpg"}
    assert "skipped 2" in capsys.readouterr().err
    with pytest.raises(FerkitError, match="cannot decode"):
        data.load_dataset(root, image_size=32, strict=True, use_cache=False)


@pytest.mark.parametrize("case", ["missing", "empty", "empty_class", "no_class_folders", "absent_class", "file"])
def test_bad_sources_raise_one_clear_error(tmp_path, case):
    root = tmp_path / "d"
    classes = None
    if case != "missing":
        root.mkdir()
    if case == "empty_class":
        make_folder(root, ["angry"], 2)
        (root / "happy").mkdir()
        classes = ("angry", "happy")
    if case == "no_class_folders":
        (root / "x.png").write_bytes(b"")
    if case == "absent_class":
        make_folder(root, ["angry", "happy"], 2)
        classes = ("angry", "sad")
    if case == "file":
        root = tmp_path / "x.txt"
        root.write_text("hi")
    with pytest.raises(FerkitError) as info:
        data.load_dataset(root, classes=classes, image_size=32)
    assert "\n" not in str(info.value)


def test_cache_hit_and_invalidation(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", ["angry", "happy"], 3)
    first = data.load_dataset(root, image_size=32)
    calls = []
    real = data._decode_all
    monkeypatch.setattr(data, "_decode_all", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = data.load_dataset(root, image_size=32)
    assert calls == [] and np.array_equal(first.images, second.images)
    data.load_dataset(root, image_size=48)  # another size is another entry
    assert calls == [1]
    target = root / "angry" / "angry_000.png"
    time.sleep(0.01)
    make_folder(tmp_path / "other", ["angry"], 1, seed=9)
    os.replace(tmp_path / "other" / "angry" / "angry_000.png", target)
    third = data.load_dataset(root, image_size=32)
    assert calls == [1, 1] and not np.array_equal(first.images, third.images)


def test_manifest_source(tmp_path):
    root = make_folder(tmp_path / "d", ["angry", "happy"], 3)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,class,source\nd/angry/angry_000.png,anger,real\n"
                        f"{root / 'happy' / 'happy_001.png'},happy,synthetic\n")
    ds = data.load_dataset(manifest, image_size=32)
    assert ds.classes == ("angry", "happy") and list(ds.labels) == [0, 1]
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nx,y\n")
    with pytest.raises(FerkitError, match="header"):
        data.load_dataset(bad)
