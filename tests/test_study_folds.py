"""Grouped, cross-validated studies: no group in both training and test, resume, named arms, bad input."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import pattern_image, read_rows

from ferkit.cli import run
from ferkit.errors import FerkitError
from ferkit.experiments import StudyConfig, compare_settings, image_groups, parse_arm, plan_folds, run_study

GROUP = r"^(S\d+)_"


def _lab(root: Path, subjects: int = 8, frames: int = 2, classes=("happy", "sad"), only=None, size: int = 32,
         seed: int = 0) -> Path:
    """A lab-style dataset: every subject S<nn> makes every expression (``only``: class -> the subjects
    that make it), a few near-identical frames each, named S<nn>_<seq>_<frame>.png like CK+."""
    import cv2

    rng = np.random.default_rng(seed)
    for ci, cls in enumerate(classes):
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for s in (only or {}).get(cls, range(1, subjects + 1)):
            for f in range(frames):
                cv2.imwrite(str(d / f"S{s:02d}_{ci + 1:03d}_{f:08d}.png"), pattern_image(ci, rng, size))
    return root



def _group(path: str) -> str:
    return re.match(GROUP, Path(path).name).group(1)


def _one_line_error(capsys, rc) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 1, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("ferkit: error:")
    return err


# ----------------------------------------------------------------------------- plans
def test_groups_from_file_names_or_a_manifest_column(tmp_path):
    paths = ["/x/S005_001_01.png", "/x/S005_002_01.png", "/y/S010_001_01.png"]
    assert image_groups(paths, GROUP) == ["S005", "S005", "S010"]
    assert image_groups(paths, r"S\d+") == ["S005", "S005", "S010"]   # no capture group: the whole match
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,class,person\na.png,happy,ann\nb.png,sad,ann\nc.png,sad,bob\n")
    assert image_groups([str(tmp_path / n) for n in ("a.png", "b.png", "c.png")], "person", manifest) == \
        ["ann", "ann", "bob"]
    for spec, words in ((r"^(P\d+)_", "matches no file name"), (r"^(S)", "puts all 3 faces in one group"),
                        (r"^(S00\d)_", "in 1 of 3 file names"), ("(", "not a valid regular expression")):
        with pytest.raises(FerkitError, match=words):
            image_groups(paths, spec)


def test_fold_plans_keep_groups_in_one_part_and_every_class_in_each_test_fold():
    groups = [f"S{g}" for g in range(12) for _ in range(6)]
    labels = np.asarray([c for _ in range(12) for c in (0, 0, 1, 1, 2, 2)])
    plan = plan_folds(labels, groups, 3, ("a", "b", "c"), seed=1)
    assert plan.k == 3
    seen = []
    for fold in plan.folds:
        parts = plan.parts(fold)
        assert not parts["train"] & parts["test"] and not parts["val"] & parts["test"]
        assert not parts["train"] & parts["val"] and parts["val"]
        assert sorted(np.concatenate([fold.train, fold.val, fold.test]).tolist()) == list(range(len(labels)))
        assert set(labels[fold.test]) == {0, 1, 2}
        seen += sorted(parts["test"])
    assert sorted(seen) == sorted(set(groups))   # every group is tested exactly once
    again = plan_folds(labels, groups, 3, ("a", "b", "c"), seed=1)
    assert all((a.test == b.test).all() and (a.val == b.val).all() for a, b in zip(plan.folds, again.folds))


# ----------------------------------------------------------------------------- the study
@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    real = _lab(root / "real", subjects=8)
    # generated faces made "per fold" (here: the same pattern faces, in one folder per fold) and a shared pool
    per_fold = {f: _lab(root / "gen" / f"fold{f}", subjects=6, frames=2, seed=10 + f) for f in (1, 2)}
    shared = _lab(root / "shared", subjects=6, frames=2, seed=20)
    return {"real": real, "gen": root / "gen" / "fold{fold}", "per_fold": per_fold, "shared": shared}


def _args(lab, out, *extra):
    return ["study", "--real", str(lab["real"]), "--folds", "2", "--group-by", GROUP,
            "--synthetic", f"gan={lab['gen']}", "--synthetic", f"proc={lab['shared']}",
            "--ratios", "0,1", "--seeds", "1", "--no-synthetic-arm", "--arch", "tiny", "--epochs", "1",
            "--image-size", "16", "--batch-size", "8", "--no-progress", "--out", str(out), *extra]


def test_grouped_study_never_puts_a_group_in_train_and_test_and_resumes(lab, tmp_path, capsys):
    out = tmp_path / "study"
    args = _args(lab, out, "--arm", "gan-aug:augment,source=gan,k=1")
    # first an interrupted study: only half of its runs finish (one shard of two) ...
    assert run(args + ["--shard", "1/2"]) == 0
    first = {p.name for p in (out / "runs").iterdir() if (p / "summary.json").exists()}
    assert "of other shards remain" in capsys.readouterr().out
    # ... then the same command finishes it, training only what is missing
    assert run(args) == 0
    printed = capsys.readouterr().out
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 2 * 5 and len(first) == 5     # folds x settings x seeds
    assert f"{len(runs) - len(first)} trained, {len(first)} already finished" in printed
    assert "seeds x folds" in printed

    # the split: every group is tested in exactly one fold, and no run trains on its fold's test or val groups
    tested = {}
    for fold in (1, 2):
        parts = {name: {r["group"] for r in read_rows(out / "folds" / f"fold{fold}" / f"{name}.csv")}
                 for name in ("train", "val", "test")}
        assert parts["val"] and not parts["train"] & parts["test"] and not parts["val"] & (parts["train"] |
                                                                                          parts["test"])
        tested.update({g: fold for g in parts["test"]})
        for manifest in (out / "manifests").glob(f"f{fold}_*.csv"):
            rows = read_rows(manifest)
            real = {_group(r["path"]) for r in rows if r["source"] == "real"}
            assert real and real <= parts["train"], manifest.name
            gan = [r["path"] for r in rows if r["source"] == "gan"]
            assert all(f"{Path('gen') / f'fold{fold}'}" in p for p in gan)   # {fold}: this fold's own folder
        cfg = json.loads((out / "runs" / f"f{fold}_nall_k0_s0" / "config.json").read_text())
        assert cfg["val_dir"].endswith(f"fold{fold}/val.csv")
    assert sorted(tested) == [f"S{s:02d}" for s in range(1, 9)]
    assert {r["group"]: int(r["fold"]) for r in read_rows(out / "folds" / "groups.csv")} == tested

    table = {r["setting"]: r for r in read_rows(out / "table.csv")}
    assert set(table) == {"k0", "aug", "k1-gan", "k1-proc", "gan-aug"}
    assert {(r["seeds"], r["folds"]) for r in table.values()} == {("1", "2")}
    assert table["k1-gan"]["ci_method"] == "paired" and table["gan-aug"]["k"] == ""
    runs_csv = read_rows(out / "runs.csv")
    assert {r["fold"] for r in runs_csv} == {"1", "2"}
    d, lo, hi, method = compare_settings(runs_csv, "gan-aug", "k1-gan")
    assert method == "paired" and lo <= d <= hi   # 2 pairs: (fold, seed)
    assert "2 folds with no group in two parts" in (out / "summary.md").read_text()
    gan_aug = json.loads((out / "runs" / "f2_nall_gan-aug_s0" / "config.json").read_text())
    assert gan_aug["augment"] is True

    # a finished study is skipped; deleting one run's summary re-runs just that one
    cfg = StudyConfig(real=str(lab["real"]), folds=2, group_by=GROUP, out=str(out), ratios="0,1", seeds=1,
                      synthetic=[f"gan={lab['gen']}", f"proc={lab['shared']}"], synthetic_arm=False, progress=False,
                      arms=["gan-aug:augment,source=gan,k=1"],
                      train=dict(arch="tiny", epochs=1, image_size=16, batch_size=8))
    (out / "runs" / "f2_nall_k1-proc_s0" / "summary.json").unlink()
    res = run_study(cfg)
    assert (res.trained, res.skipped) == (1, len(runs) - 1)
    # another split into the same folder is refused, and so is a changed arm
    capsys.readouterr()
    assert "different settings (fold_seed)" in _one_line_error(capsys, run(args + ["--fold-seed", "3"]))
    bad = _args(lab, out, "--arm", "gan-aug:source=gan,k=1")
    assert "arm gan-aug was defined differently" in _one_line_error(capsys, run(bad))


def test_fine_tune_arm_starts_from_the_model(lab, tmp_path):
    from ferkit.train import TrainConfig, train

    model = tmp_path / "base"
    train(TrainConfig(train_dir=str(lab["shared"]), val_dir=str(lab["shared"]), out=str(model), arch="tiny",
                      image_size=32, epochs=1, batch_size=8, progress=False))
    out = tmp_path / "ft"
    res = run_study(StudyConfig(real=str(lab["real"]), folds=2, group_by=GROUP, out=str(out), ratios="0", seeds=1,
                                synthetic=[f"gan={lab['gen']}"], synthetic_arm=False, augment_arm=False,
                                progress=False,
                                arms=[f"ft:init={model}", f"ft-gan:init={model},source=gan,k=1,lr=0.001"],
                                train=dict(arch="vgg", model_args={"width": 8}, epochs=1, image_size=32, batch_size=8)))
    assert {r["setting"] for r in res.table} == {"k0", "ft", "ft-gan"}
    scratch = json.loads((out / "runs" / "f1_nall_k0_s0" / "config.json").read_text())
    ft = json.loads((out / "runs" / "f1_nall_ft_s0" / "config.json").read_text())
    ft_gan = json.loads((out / "runs" / "f2_nall_ft-gan_s0" / "config.json").read_text())
    assert (scratch["arch"], scratch["model_args"]["width"], scratch["init"]) == ("vgg", 8, None)
    assert (ft["arch"], ft["init"], ft["model_args"].get("width")) == ("tiny", str(model), None)
    assert ft_gan["lr"] == 0.001 and ft["lr"] == scratch["lr"]
    n_real = len(read_rows(out / "manifests" / "f2_nall_ft_s0.csv"))
    assert len(read_rows(out / "manifests" / "f2_nall_ft-gan_s0.csv")) == 2 * n_real
    with pytest.raises(FerkitError, match="takes 32 px faces"):
        StudyConfig(real="r", folds=2, group_by=GROUP, out="o", synthetic=["x"], arms=[f"ft:init={model}"],
                    train=dict(image_size=48))


def test_named_arm_specs():
    arm = parse_arm("ft-gan:init=fer2013-vgg,source=gan,k=2", ("gan", "proc"))
    assert (arm.init, arm.source, arm.k, arm.custom) == ("fer2013-vgg", "gan", 2.0, True)
    assert parse_arm("g:source=gan", ("gan",)).k == 1.0 and parse_arm("g:k=2", ("gan",)).source == "gan"
    for spec, words in (("ft", "NAME:key=value"), ("k2:init=x", "built-in"), ("a:color=red", "unknown key"),
                        ("a:source=nope", "no generated-data source"), ("a:k=2", "needs source=NAME"),
                        ("a:lr=x", "not a number"), ("a:", "give a data mix")):
        with pytest.raises(FerkitError, match=words):
            parse_arm(spec, ("gan", "proc"))
    # a value is checked where training checks it, named by its arm
    with pytest.raises(FerkitError, match="--arm a: learning rate must be a positive number"):
        StudyConfig(real_train="r", val="v", test="t", synthetic=["gan=g"], out="o", arms=["a:lr=-1"])


def test_grouped_study_bad_input(lab, tmp_path, capsys):
    out = tmp_path / "bad"
    one_sad = _lab(tmp_path / "one_sad", subjects=6, only={"sad": [1]})
    cases = [
        (["--group-by", r"^(P\d+)_"], "matches no file name"),
        (["--group-by", r"^(S)"], "puts all 32 faces in one group"),
        (["--folds", "9"], "--folds 9 needs at least 9 groups"),
        (["--folds", "1"], "at least 2"),
        (["--folds", "two"], "number of folds"),
        (["--real", str(one_sad)], "test part has no sad faces"),
        (["--val-fraction", "0.9"], "validation fraction"),
        (["--val", str(lab["real"])], "leave out --val"),
        (["--arm", "ft:init=" + str(tmp_path / "missing")], "no such checkpoint"),
    ]
    for extra, words in cases:
        args = _args(lab, out)
        for flag, value in zip(extra[::2], extra[1::2]):
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
        err = _one_line_error(capsys, run(args))
        assert words in err, (extra, err)
        assert not out.exists(), extra
    args = _args(lab, out)
    i = args.index("--folds")
    err = _one_line_error(capsys, run(args[:i] + args[i + 2:]))
    assert "missing: --folds" in err
    fixed = ["study", "--real-train", str(lab["real"]), "--val", str(lab["real"]), "--test", str(lab["real"]),
             "--synthetic", f"gan={lab['gen']}", "--out", str(out)]
    assert "needs --folds" in _one_line_error(capsys, run(fixed))
    assert not out.exists()
