"""Procedural face generator: determinism, layout, metadata round trip, splits, errors."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from ferkit import synth
from ferkit.errors import FerkitError
from ferkit.synth import (
    DEFAULT_CLASSES,
    META_COLUMNS,
    generate_faces,
    generate_splits,
    render_face,
    sample_face_params,
    write_preview,
)

SMALL = dict(size=24, progress=False, workers=1)


def _read_meta(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_params_json_and_render_deterministic():
    p = sample_face_params([1, 2, 3], "happy", identity_id=7, seed=1)
    q = json.loads(json.dumps(p))
    assert q == p
    a, b = render_face(p, 48), render_face(q, 48)
    assert a.shape == (48, 48) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    c = render_face(p, 40, color=True)
    assert c.shape == (40, 40, 3) and c.dtype == np.uint8
    # a Generator works too, and the identity depends only on (seed, identity_id)
    g = sample_face_params(np.random.default_rng(0), "sad", identity_id=7, seed=1)
    assert g["identity_params"] == p["identity_params"]


def test_same_seed_same_bytes_and_layout(tmp_path):
    a = generate_faces(tmp_path / "a", 3, classes=["happy", "sad"], seed=5, **SMALL)
    b = generate_faces(tmp_path / "b", 3, classes=["happy", "sad"], seed=5, **SMALL)
    ta, tb = _tree(a), _tree(b)
    assert ta == tb
    assert sorted(ta) == ["happy/happy_000000.png", "happy/happy_000001.png", "happy/happy_000002.png",
                          "metadata.csv", "sad/sad_000000.png", "sad/sad_000001.png", "sad/sad_000002.png"]
    c = generate_faces(tmp_path / "c", 3, classes=["happy", "sad"], seed=6, **SMALL)
    assert _tree(c)["happy/happy_000000.png"] != ta["happy/happy_000000.png"]
    img = cv2.imread(str(a / "sad" / "sad_000001.png"), cv2.IMREAD_UNCHANGED)
    assert img.shape == (24, 24) and img.dtype == np.uint8


def test_workers_do_not_change_output(tmp_path):
    # 70 faces: above the threshold where a process pool is used
    kw = dict(size=16, progress=False, seed=3)
    one = generate_faces(tmp_path / "one", 10, workers=1, **kw)
    two = generate_faces(tmp_path / "two", 10, workers=2, **kw)
    assert _tree(one) == _tree(two)


def test_metadata_columns_rows_and_regeneration(tmp_path):
    out = generate_faces(tmp_path / "d", 2, classes="angry,disgust", identities=3, identity_offset=100,
                         **SMALL)
    rows = _read_meta(out / "metadata.csv")
    assert tuple(rows[0]) == META_COLUMNS
    assert [r["file"] for r in rows] == ["angry/angry_000000.png", "angry/angry_000001.png",
                                         "disgusted/disgusted_000000.png", "disgusted/disgusted_000001.png"]
    assert {r["class"] for r in rows} == {"angry", "disgusted"}
    assert {int(r["identity"]) for r in rows} <= {100, 101, 102}
    for r in rows:
        params = json.loads(r["params"])
        assert params["expression"] == r["class"] and params["identity"] == int(r["identity"])
        assert float(r["AU4"]) == params["aus"]["AU4"]
        img = render_face(params, int(r["size"]), bool(int(r["color"])))
        assert np.array_equal(img, cv2.imread(str(out / r["file"]), cv2.IMREAD_UNCHANGED))


def test_colour_regenerates(tmp_path):
    out = generate_faces(tmp_path / "c", 1, classes=["surprised"], color=True, **SMALL)
    r = _read_meta(out / "metadata.csv")[0]
    rgb = render_face(json.loads(r["params"]), 24, color=True)
    bgr = cv2.imread(str(out / r["file"]), cv2.IMREAD_UNCHANGED)
    assert bgr.shape == (24, 24, 3)
    assert np.array_equal(rgb, bgr[..., ::-1])


def test_identity_pool_and_unique_identities(tmp_path):
    pool = _read_meta(generate_faces(tmp_path / "p", 4, classes=["happy", "sad"], identities=2, **SMALL)
                      / "metadata.csv")
    assert {int(r["identity"]) for r in pool} == {0, 1}
    # each identity of the pool makes each expression
    assert {(r["identity"], r["class"]) for r in pool} == {(i, c) for i in "01" for c in ("happy", "sad")}
    own = _read_meta(generate_faces(tmp_path / "o", 4, classes=["happy", "sad"], **SMALL) / "metadata.csv")
    assert len({r["identity"] for r in own}) == 8


def test_splits_are_identity_disjoint(tmp_path):
    out = generate_splits(tmp_path / "s", {"train": 4, "val": 2, "test": 3}, classes=["happy", "neutral"],
                          identities_per_split={"train": 3}, **SMALL)
    ids = {}
    for split in ("train", "val", "test"):
        rows = _read_meta(out / split / "metadata.csv")
        assert len(rows) == {"train": 4, "val": 2, "test": 3}[split] * 2
        assert all((out / split / r["file"]).is_file() for r in rows)
        ids[split] = {int(r["identity"]) for r in rows}
    assert ids["train"] == {0, 1, 2}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    # the test faces are not the training faces with another identity pasted in
    tr, te = (_read_meta(out / s / "metadata.csv")[0] for s in ("train", "test"))
    assert tr["AU12"] != te["AU12"] or tr["roll"] != te["roll"]


def test_bad_arguments_raise_ferkit_error(tmp_path):
    with pytest.raises(FerkitError):
        generate_faces(tmp_path / "x", 0, **SMALL)
    with pytest.raises(FerkitError):
        generate_faces(tmp_path / "x", -3, **SMALL)
    with pytest.raises(FerkitError):
        generate_faces(tmp_path / "x", 2, size=8, progress=False)
    with pytest.raises(FerkitError, match="unknown class"):
        generate_faces(tmp_path / "x", 2, classes=["happy", "bored"], **SMALL)
    with pytest.raises(FerkitError):
        generate_faces(tmp_path / "x", 2, intensity=(0.8, 0.2), **SMALL)
    with pytest.raises(FerkitError):
        generate_splits(tmp_path / "x", {"train": 0}, **SMALL)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(FerkitError):
        generate_faces(blocker, 1, **SMALL)  # out_dir is a file
    with pytest.raises(FerkitError):
        generate_faces(blocker / "sub" / "out", 1, **SMALL)  # parent is a file
    assert not (tmp_path / "x").exists()


def test_overwrite_rules(tmp_path):
    out = tmp_path / "o"
    generate_faces(out, 1, classes=["happy"], seed=1, **SMALL)
    first = _tree(out)
    with pytest.raises(FerkitError, match="not empty"):
        generate_faces(out, 1, classes=["happy"], seed=2, **SMALL)
    assert _tree(out) == first
    generate_faces(out, 2, classes=["sad"], seed=2, overwrite=True, **SMALL)
    assert sorted(p.name for p in out.iterdir()) == ["metadata.csv", "sad"]
    # an existing empty directory is fine without overwrite
    (tmp_path / "empty").mkdir()
    generate_faces(tmp_path / "empty", 1, classes=["happy"], **SMALL)
    # never delete a directory that is not a dataset
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.txt").write_text("x")
    with pytest.raises(FerkitError, match="refusing"):
        generate_faces(other, 1, overwrite=True, **SMALL)
    assert (other / "thesis.txt").exists()
    # splits: overwrite works on a splits dataset too
    generate_splits(tmp_path / "s", {"train": 1, "test": 1}, classes=["happy"], **SMALL)
    with pytest.raises(FerkitError):
        generate_splits(tmp_path / "s", {"train": 1, "test": 1}, classes=["happy"], **SMALL)
    generate_splits(tmp_path / "s", {"train": 1}, classes=["happy"], overwrite=True, **SMALL)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["train"]


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def boom(task):
        calls.append(task)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(task)

    from ferkit.synth import procedural
    real = procedural._render_task
    monkeypatch.setattr(procedural, "_render_task", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_faces(tmp_path / "out", 2, classes=["happy", "sad"], **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_preview_size(tmp_path):
    out = write_preview(tmp_path / "sub" / "preview.png", classes=["happy", "sad", "angry"], per_class=4,
                        size=32)
    img = cv2.imread(str(out))
    assert img.shape == (3 * 96, 120 + 4 * 96, 3)


def test_expressions_move_geometry():
    base = sample_face_params([9], "neutral", identity_id=4, seed=0)
    base["camera"].update(noise=0.0, jpeg=0, blur=0.0)
    neutral = render_face(base, 64).astype(int)
    for cls in ("happy", "sad", "surprised", "fearful", "angry", "disgusted"):
        p = sample_face_params([9], cls, identity_id=4, seed=0)
        p["camera"], p["pose"], p["light"], p["background"] = (base["camera"], base["pose"], base["light"],
                                                                 base["background"])
        diff = np.abs(render_face(p, 64).astype(int) - neutral)
        assert (diff > 25).sum() > 40, cls  # features moved, not a few pixels of noise
    # each single AU changes pixels on its own
    quiet = json.loads(json.dumps(base))
    quiet["aus"] = {k: 0.0 for k in quiet["aus"]}
    ref = render_face(quiet, 64).astype(int)
    for au in synth.AUS:
        p = json.loads(json.dumps(quiet))
        p["aus"][au] = 1.0
        assert (np.abs(render_face(p, 64).astype(int) - ref) > 20).sum() > 5, au


def test_intensity_controls_strength():
    # identical draws except intensity: the stronger face is further from its neutral
    p_lo = sample_face_params([5], "happy", 2, intensity=(0.1, 0.1))
    p_hi = sample_face_params([5], "happy", 2, intensity=(1.0, 1.0))
    assert p_hi["aus"]["AU12"] > 3 * p_lo["aus"]["AU12"]
    assert set(DEFAULT_CLASSES) == {"angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral"}
