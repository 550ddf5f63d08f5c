"""Realism of edited faces (ferkit.synth.realism): the real-vs-edit two-sample test, the
high-frequency energy ratio, and `gan evaluate`'s per-domain report, on procedural faces."""
import json

import numpy as np
import pytest

from ferkit.cli import run
from ferkit.errors import FerkitError
from ferkit.synth import generate_faces, render_face, sample_face_params
from ferkit.synth.realism import group_folds, hf_ratio, paired_realism, realism_features, two_sample_auc

FOUR = ["angry", "happy", "sad", "surprised"]


def _faces(n, seed=3, size=48):
    return np.stack([render_face(sample_face_params([seed, i], FOUR[i % 4], i, seed=seed), size=size)
                     for i in range(n)])


def _checkerboard(faces, amplitude=6):
    yy, xx = np.mgrid[:faces.shape[1], :faces.shape[2]]
    return np.clip(faces.astype(int) + ((yy + xx) % 2 * 2 - 1) * amplitude, 0, 255).astype(np.uint8)


def _blur(faces):
    import cv2
    return np.stack([cv2.GaussianBlur(f, (0, 0), 1.0) for f in faces])


@pytest.fixture(scope="module")
def faces():
    return _faces(160)


def test_two_halves_of_one_set_cannot_be_told_apart_and_a_checkerboard_can(faces):
    order = np.random.default_rng(0).permutation(len(faces))
    halves = two_sample_auc(faces[order[:80]], faces[order[80:]])
    assert 0.3 < halves["mean"] < 0.7 and len(halves["folds"]) == 5 and halves["real"] == halves["edited"] == 80
    idx = np.arange(len(faces))
    patterned = two_sample_auc(faces, _checkerboard(faces), idx, idx)
    assert patterned["mean"] > 0.95
    smeared = two_sample_auc(faces, _blur(faces), idx, idx)
    assert smeared["mean"] > 0.95


def test_high_frequency_ratio_rises_with_a_checkerboard_and_falls_with_blur(faces):
    assert hf_ratio(faces, faces) == pytest.approx(1.0)
    assert hf_ratio(_checkerboard(faces), faces) > 1.2
    assert hf_ratio(_blur(faces), faces) < 0.8
    with pytest.raises(FerkitError, match="flat"):
        hf_ratio(faces, np.full((3, 48, 48), 128, np.uint8))


def test_features_and_folds():
    f = realism_features(_faces(4))
    assert f.shape == (4, 144 + 20) and np.allclose(f[:, 144:].sum(1), 1)   # histogram fractions
    groups = np.repeat(np.arange(23), 3)           # 23 source faces, three rows each
    fold = group_folds(groups, 5, seed=1)
    assert all(len(set(fold[groups == g])) == 1 for g in range(23))
    sizes = np.bincount(fold[::3], minlength=5)
    assert sizes.max() - sizes.min() <= 1 and not np.array_equal(fold, group_folds(groups, 5, seed=2))


def test_paired_realism_is_chance_for_unchanged_edits_and_not_for_patterned_ones(faces):
    src = np.r_[np.arange(40), np.arange(40), np.arange(20)]      # a face edited up to three times
    same = paired_realism(faces, src, faces[src])
    assert same["auc"]["mean"] == 0.5 and same["hf_ratio"] == pytest.approx(1.0) and same["pairs"] == 40
    patterned = paired_realism(faces, src, _checkerboard(faces[src]))
    assert patterned["auc"]["mean"] > 0.95 and patterned["hf_ratio"] > 1.2
    assert paired_realism(faces, np.arange(6), faces[:6])["auc"] is None       # too few for 5 folds
    with pytest.raises(FerkitError, match="folds"):
        two_sample_auc(faces[:3], faces[3:6], folds=5)


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("domains")
    for name, seed in (("lab", 1), ("film", 2)):
        generate_faces(root / name, per_class=10, classes=FOUR, size=48, seed=seed, progress=False, workers=1)
    return root


def test_gan_evaluate_reports_realism_per_domain(domains, tmp_path, monkeypatch, capsys):
    """The bundled editor and judge on two procedural domains, with the generator's edits replaced
    by a stamped checkerboard (told apart, sharper), then by the faces unchanged (chance, same texture)."""
    import ferkit.synth.quality as quality

    def stamp(G, record, faces, targets, device):
        return _checkerboard(faces)
    monkeypatch.setattr(quality, "generate", stamp)
    assert run(["gan", "evaluate", "fer2013-editor", "--real", str(domains / "lab"), "--real", str(domains / "film"),
                "--judge", "ferplus-vgg16", "--classes", ",".join(FOUR), "--per-class", "8", "--out",
                str(tmp_path / "q"), "--no-progress"]) == 0
    r = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert list(r["domains"]) == ["lab", "film"] and r["real"] == [str(domains / "lab"), str(domains / "film")]
    for row in r["domains"].values():
        assert row["real_faces"] == 40 and row["generated_faces"] == 32 and row["kid"] is not None
    assert r["generated_faces"] == 64 and r["realism"]["pairs"] > 10
    assert sorted(r["grids"]) == ["edits-film.png", "edits-lab.png"]
    assert all((tmp_path / "q" / g).is_file() for g in r["grids"])
    printed = capsys.readouterr().out
    assert "real-vs-edit AUC" in printed and "film" in printed and "HF ratio" in printed
    for realism in [r["realism"], *(row["realism"] for row in r["domains"].values())]:
        assert realism["auc"]["mean"] > 0.9 and realism["hf_ratio"] > 1.2

    monkeypatch.setattr(quality, "generate", lambda G, record, faces, targets, device: faces.copy())
    r = quality.evaluate_gan("fer2013-editor", [domains / "lab", domains / "film"], judge="ferplus-vgg16",
                             out=tmp_path / "same", per_class=8, classes=",".join(FOUR), progress=False)
    for realism in [r["realism"], *(row["realism"] for row in r["domains"].values())]:
        assert realism["auc"]["mean"] == 0.5 and realism["hf_ratio"] == pytest.approx(1.0)


def test_real_faces_keep_each_face_s_file(domains):
    """load_real_faces gives each face its file (bench_realism's fold judges find a face's fold by it)."""
    from pathlib import Path

    import cv2

    from ferkit.synth.gan import load_generator
    from ferkit.synth.quality import load_real_faces

    _, grec, _ = load_generator("fer2013-editor", "cpu")
    real = load_real_faces([domains / "lab", domains / "film"], grec, ",".join(FOUR), progress=False)
    assert len(real.paths) == len(real.images) == 80
    for i in (0, 39, 40, 79):
        p = Path(real.paths[i])
        assert p.parent.name == grec.classes[real.labels[i]] and p.parent.parent.name == real.names[real.domain[i]]
        assert np.array_equal(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), real.images[i])
