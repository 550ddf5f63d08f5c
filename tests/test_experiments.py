"""`ferkit mix` and `ferkit study`: selection rules, manifests, a tiny end-to-end study, resume, bad input."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import make_folder, read_rows

from ferkit.cli import run
from ferkit.data import scan_source
from ferkit.errors import FerkitError
from ferkit.experiments import (
    StudyConfig,
    allocate,
    build_mix,
    diff_ci,
    draw_per_class,
    parse_ratios,
    parse_sizes,
    plan_study,
    real_subset,
    run_study,
    t_quantile,
)


def _faces(root: Path, per_class: int, seed: int, classes=("happy", "sad"), size: int = 32) -> Path:
    """Generated faces from ferkit's own generator (pattern images if it is unavailable)."""
    try:
        from ferkit.synth import generate_faces
    except ImportError:
        return make_folder(root, classes, per_class, seed=seed, size=size)
    return generate_faces(root, per_class=per_class, classes=list(classes), size=size, seed=seed,
                          workers=1, progress=False)



def _counts(rows, source=None) -> dict:
    out: dict = {}
    for r in rows:
        if source is None or r["source"] == source:
            out[r["class"]] = out.get(r["class"], 0) + 1
    return out


def _one_line_error(capsys, rc) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 1, err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ferkit: error:")
    return err


# ----------------------------------------------------------------------------- selection rules
def test_parse_ratios_and_sizes():
    assert parse_ratios("0, 0.5,1,1,8") == (0.0, 0.5, 1.0, 8.0)
    assert parse_ratios(2) == (2.0,)
    for bad in ("0,x", "-1", "nan", "", "inf"):
        with pytest.raises(FerkitError):
            parse_ratios(bad)
    assert parse_sizes("25,50,all") == (25, 50, None)
    for bad in ("0", "x", "-3"):
        with pytest.raises(FerkitError):
            parse_sizes(bad)


def test_allocate_keeps_proportions_or_balances():
    assert allocate([8, 4], 24).tolist() == [16, 8]
    assert allocate([8, 4], 6).tolist() == [4, 2]
    assert allocate([3, 3, 3], 4).sum() == 4
    assert allocate([8, 4], 0).tolist() == [0, 0]
    # balance: top up the small class first, then share equally
    assert allocate([8, 4], 24, balance=True).tolist() == [10, 14]
    assert allocate([8, 4], 2, balance=True).tolist() == [0, 2]
    assert allocate([8, 4], 5, balance=True).tolist() == [1, 4]  # totals 9 and 8
    a = allocate([8, 4], 7, balance=True)
    assert a.sum() == 7 and abs((8 + a[0]) - (4 + a[1])) <= 1


def test_draws_are_nested_and_replacement_is_counted():
    labels = np.array([0] * 10 + [1] * 10)
    small, _ = draw_per_class(labels, [2, 3], seed=1, classes=("a", "b"))
    big, _ = draw_per_class(labels, [5, 6], seed=1, classes=("a", "b"))
    assert set(small) <= set(big)
    with pytest.raises(FerkitError, match="only 10 exist"):
        draw_per_class(labels, [11, 0], seed=0, classes=("a", "b"))
    idx, dup = draw_per_class(labels, [25, 0], seed=0, classes=("a", "b"), replace=True)
    assert len(idx) == 25 and dup == 15
    assert np.bincount(idx, minlength=10)[:10].min() == 2  # every image used before any is used thrice
    sub = real_subset(np.array([0] * 7 + [1] * 3), 5, 2)
    assert np.bincount(np.array([0] * 7 + [1] * 3)[sub]).tolist() == [5, 3]


def test_paired_confidence_interval():
    d, lo, hi, method = diff_ci({0: 0.6, 1: 0.7, 2: 0.8}, {0: 0.5, 1: 0.6, 2: 0.6})
    assert method == "paired" and d == pytest.approx(0.1333333)
    sd = np.std([0.1, 0.1, 0.2], ddof=1)
    assert hi - d == pytest.approx(t_quantile(2) * sd / np.sqrt(3))
    assert t_quantile(2) == pytest.approx(4.303, abs=1e-3)


# ----------------------------------------------------------------------------- mix
@pytest.fixture
def mix_data(tmp_path):
    real = tmp_path / "real"
    make_folder(real, ["happy"], 8, seed=1, size=24)
    make_folder(real, ["sad"], 4, seed=2, size=24)
    syn = make_folder(tmp_path / "syn", ["happy", "sad", "angry"], 20, seed=3, size=24)
    return real, syn


def test_mix_keeps_class_balance_and_ratio(mix_data, tmp_path, capsys):
    real, syn = mix_data
    out = tmp_path / "mixes" / "k2.csv"
    assert run(["mix", "--real", str(real), "--synthetic", str(syn), "--ratio", "2", "--out", str(out)]) == 0
    assert "8 real" in capsys.readouterr().out
    rows = read_rows(out)
    assert list(rows[0]) == ["path", "class", "source"]
    assert _counts(rows, "real") == {"happy": 8, "sad": 4}
    assert _counts(rows, "synthetic") == {"happy": 16, "sad": 8}  # 2 x 12, real proportions kept
    assert all(os.path.isabs(r["path"]) and os.path.exists(r["path"]) for r in rows)
    assert len({r["path"] for r in rows}) == len(rows)  # no repeats without --replace
    src = scan_source(out)  # `ferkit train` reads it like a folder
    assert len(src.files) == 36 and set(src.found_classes) == {"happy", "sad"}
    assert not list(out.parent.glob(".*tmp"))  # atomic write leaves no temp file

    half = build_mix(real, [syn], 0.5, tmp_path / "k05.csv", seed=3)
    assert half.synthetic_counts == {"happy": 4, "sad": 2} and half.n_real == 12


def test_mix_balance_equalises_classes(mix_data, tmp_path):
    real, syn = mix_data
    r = build_mix(real, syn, 2, tmp_path / "bal.csv", balance=True)
    assert r.n_synthetic == 24
    assert _counts(read_rows(tmp_path / "bal.csv")) == {"happy": 18, "sad": 18}


def test_mix_too_many_is_an_error_unless_replace(mix_data, tmp_path, capsys):
    real, syn = mix_data
    out = tmp_path / "k4.csv"
    err = _one_line_error(capsys, run(["mix", "--real", str(real), "--synthetic", str(syn), "--ratio", "4",
                                       "--out", str(out)]))
    assert "--replace" in err and "only 20 exist" in err
    assert not out.exists()
    rc = run(["mix", "--real", str(real), "--synthetic", str(syn), "--ratio", "4", "--replace", "--out", str(out)])
    assert rc == 0
    assert "with replacement" in capsys.readouterr().out
    rows = read_rows(out)
    assert _counts(rows, "synthetic") == {"happy": 32, "sad": 16}
    happy = [r["path"] for r in rows if r["source"] == "synthetic" and r["class"] == "happy"]
    assert len(set(happy)) == 20  # all 20 used, 12 repeats


def test_mix_bad_input(mix_data, tmp_path, capsys):
    real, syn = mix_data
    (tmp_path / "empty").mkdir()
    partial = make_folder(tmp_path / "partial", ["happy"], 5, size=24)
    cases = [
        (["--real", str(real), "--synthetic", str(syn), "--ratio", "two"], "not a number"),
        (["--real", str(real), "--synthetic", str(syn), "--ratio", "-1"], ">= 0"),
        (["--real", str(tmp_path / "empty"), "--synthetic", str(syn), "--ratio", "1"], "no class folders"),
        (["--real", str(real), "--synthetic", str(partial), "--ratio", "1"], "no images of class sad"),
    ]
    for args, words in cases:
        err = _one_line_error(capsys, run(["mix", *args, "--out", str(tmp_path / "m.csv")]))
        assert words in err


# ----------------------------------------------------------------------------- study
@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Two classes of generated faces serving as real train/val/test and as the synthetic pool."""
    root = tmp_path_factory.mktemp("faces")
    return {"real": _faces(root / "real", 8, seed=1), "val": _faces(root / "val", 4, seed=2),
            "test": _faces(root / "test", 6, seed=3), "syn": _faces(root / "syn", 16, seed=4)}


def _study_args(faces, out, *extra):
    return ["study", "--real-train", str(faces["real"]), "--val", str(faces["val"]), "--test", str(faces["test"]),
            "--synthetic", str(faces["syn"]), "--out", str(out), "--arch", "tiny", "--epochs", "1",
            "--image-size", "32", "--batch-size", "16", "--no-progress", *extra]


def test_tiny_study_table_and_resume(faces, tmp_path, capsys):
    out = tmp_path / "study"
    args = _study_args(faces, out, "--ratios", "0,0.5,2", "--seeds", "2", "--real-per-class", "6")
    assert run(args) == 0
    printed = capsys.readouterr().out
    assert "best k" in printed and "10 trained" in printed

    with open(out / "table.csv", newline="") as fh:
        table = {r["setting"]: r for r in csv.DictReader(fh)}
    assert list(table) == ["k0", "aug", "synth", "k0.5", "k2"]
    assert {r["seeds"] for r in table.values()} == {"2"}
    assert table["k0"]["n_real"] == "12" and table["k0"]["n_synthetic"] == "0"
    assert table["k0.5"]["n_synthetic"] == "6" and table["k2"]["n_synthetic"] == "24"
    assert table["synth"]["n_real"] == "0" and table["synth"]["n_synthetic"] == "24"  # largest k x real
    assert table["k2"]["ci_method"] == "paired"
    for r in table.values():
        assert 0 <= float(r["acc_mean"]) <= 1 and float(r["acc_std"]) >= 0 and 0 <= float(r["f1_mean"]) <= 1
    lo, d, hi = (float(table["k2"][k]) for k in ("acc_diff_ci_low", "acc_diff", "acc_diff_ci_high"))
    assert lo <= d <= hi
    md = (out / "table.md").read_text()
    assert md.count("\n") == 2 + 5 and "real + 2x generated" in md
    assert "Best k" in (out / "summary.md").read_text()
    assert (out / "accuracy_vs_k.png").stat().st_size > 0

    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 10 and "n6_k2_s1" in runs and "n6_aug_s0" in runs
    for name in runs:
        assert (out / "runs" / name / "summary.json").exists()
        assert json.loads((out / "runs" / name / "eval-test" / "metrics.json").read_text())["n"] == 12
    man = read_rows(out / "manifests" / "n6_k2_s0.csv")
    assert _counts(man, "real") == {"happy": 6, "sad": 6} and _counts(man, "synthetic") == {"happy": 12, "sad": 12}
    aug_cfg = json.loads((out / "runs" / "n6_aug_s1" / "config.json").read_text())
    assert aug_cfg["augment"] is True and aug_cfg["seed"] == 1
    assert aug_cfg["train_dir"].endswith("n6_aug_s1.csv")

    # Re-running the same study skips everything ...
    cfg = dict(real_train=str(faces["real"]), val=str(faces["val"]), test=str(faces["test"]),
               synthetic=[str(faces["syn"])], out=str(out), ratios="0,0.5,2", seeds=2, real_per_class="6",
               progress=False, train=dict(arch="tiny", epochs=1, image_size=32, batch_size=16))
    stamps = {n: (out / "runs" / n / "summary.json").stat().st_mtime_ns for n in runs}
    res = run_study(StudyConfig(**cfg))
    assert (res.trained, res.skipped) == (0, 10)
    assert len(res.table) == 5 and set(res.best_k) == {"6"}
    # ... and deleting one run's summary re-runs just that one.
    (out / "runs" / "n6_k0.5_s1" / "summary.json").unlink()
    res = run_study(StudyConfig(**cfg))
    assert (res.trained, res.skipped) == (1, 9)
    changed = [n for n in runs if (out / "runs" / n / "summary.json").stat().st_mtime_ns != stamps[n]]
    assert changed == ["n6_k0.5_s1"]

    # A different study into the same folder is refused.
    capsys.readouterr()
    err = _one_line_error(capsys, run(_study_args(faces, out, "--ratios", "0,2", "--seeds", "2",
                                                  "--real-per-class", "6", "--lr", "0.01")))
    assert "different settings" in err


def test_study_parallel_jobs(faces, tmp_path):
    res = run_study(StudyConfig(real_train=str(faces["real"]), val=str(faces["val"]), test=str(faces["test"]),
                                synthetic=[str(faces["syn"])], out=str(tmp_path / "par"), ratios="0,1", seeds=1,
                                augment_arm=False, synthetic_arm=False, jobs=2, progress=False,
                                train=dict(arch="tiny", epochs=1, image_size=32, batch_size=16)))
    assert res.trained == 2 and {r["setting"] for r in res.table} == {"k0", "k1"}
    assert all("accuracy" in r for r in res.runs)
    assert (tmp_path / "par" / "logs" / "nall_k1_s0.log").read_text().count("epoch") >= 1


def test_a_study_worker_killed_by_the_os_is_one_line_and_the_study_resumes(faces, tmp_path):
    """SIGKILL (what the OOM killer sends) to a --jobs worker mid-run: one line, exit 1, and the
    same command afterwards finishes the study."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    args = [sys.executable, "-m", "ferkit", *_study_args(faces, out, "--ratios", "0,1", "--seeds", "1",
                                                          "--no-augment-arm", "--no-synthetic-arm", "--jobs", "2")]
    args[args.index("--epochs") + 1] = "400"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def workers():
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if int(fields[1]) == proc.pid and b"spawn_main" in cmd:
                found.append(int(stat.parent.name))
        return found
    deadline = time.time() + 180
    while proc.poll() is None and time.time() < deadline and not (
            list((out / "runs").glob("*/history.csv")) if (out / "runs").exists() else []):
        time.sleep(0.1)
    victims = workers()
    assert victims, "no worker process found"
    os.kill(victims[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith("ferkit: error: a study worker process died"), err
    assert "re-run the same command to resume" in lines[-1]
    assert run(args[3:]) == 0            # the same command resumes and writes the table
    assert {r["setting"] for r in read_rows(out / "table.csv")} == {"k0", "k1"}


def test_plan_fails_before_training_when_generated_data_is_short(faces, tmp_path):
    cfg = StudyConfig(real_train=str(faces["real"]), val=str(faces["val"]), test=str(faces["test"]),
                      synthetic=[str(faces["syn"])], out=str(tmp_path / "s"), ratios="0,3", seeds=1, progress=False,
                      train=dict(image_size=32))
    with pytest.raises(FerkitError, match="--replace"):
        run_study(cfg)
    assert not (tmp_path / "s" / "runs").exists()
    from ferkit.data import load_dataset
    real = load_dataset(faces["real"], image_size=32, progress=False)
    syn = load_dataset(faces["syn"], real.classes, image_size=32, progress=False)
    cfg.replace = True
    specs = plan_study(cfg, real, {"generated": syn})
    assert max(s.duplicates for s in specs) == 48 - 32


def test_study_bad_input(faces, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    partial = _faces(tmp_path / "partial", 3, seed=9, classes=("happy",))
    out = tmp_path / "bad"
    for extra, words in [(["--ratios", "0,x"], "not a number"), (["--ratios", "0,-2"], ">= 0"),
                         (["--seeds", "two"], "seeds"), (["--real-per-class", "0"], "at least 1")]:
        err = _one_line_error(capsys, run(_study_args(faces, out, *extra)))
        assert words in err
    args = _study_args(faces, out)
    i = args.index("--synthetic")
    err = _one_line_error(capsys, run(args[:i + 1] + [str(partial)] + args[i + 2:]))
    assert "no images of class sad" in err
    i = args.index("--real-train")
    err = _one_line_error(capsys, run(args[:i + 1] + [str(tmp_path / "empty")] + args[i + 2:]))
    assert "no class folders" in err
    assert not out.exists()


def test_summary_lines_wording():
    from ferkit.experiments import summary_lines
    no_gain, = summary_lines({50: 8}, {50: 0}, {})
    assert "best k = 8, but no k is significantly better than real only" in no_gain
    plateau, = summary_lines({50: 5}, {50: 2}, {50: (0.05, 0.01, 0.09, "t")})
    assert "beyond k = 2" in plateau and "versus augmentation: +0.0500 [+0.0100, +0.0900]" in plateau
    none, = summary_lines({50: 0}, {50: 0}, {})
    assert "did not help" in none


def test_study_compares_named_generated_sources_in_one_table(faces, tmp_path, capsys):
    other = _faces(tmp_path / "other", 16, seed=7)
    out = tmp_path / "two"
    args = ["study", "--real-train", str(faces["real"]), "--val", str(faces["val"]), "--test", str(faces["test"]),
            "--synthetic", f"proc={faces['syn']}", "--synthetic", f"other={other}", "--out", str(out),
            "--arch", "tiny", "--epochs", "1", "--image-size", "32", "--batch-size", "16", "--no-progress",
            "--ratios", "0,1", "--seeds", "2", "--real-per-class", "6", "--no-augment-arm"]
    assert run(args) == 0
    with open(out / "table.csv", newline="") as fh:
        table = {r["setting"]: r for r in csv.DictReader(fh)}
    assert set(table) == {"k0", "k1-proc", "k1-other", "synth-proc", "synth-other"}
    assert table["k1-proc"]["source"] == "proc" and table["k1-other"]["label"] == "real + 1x other"
    # each arm drew from its own source, per the manifests
    for name, src in (("proc", faces["syn"]), ("other", other)):
        rows = read_rows(out / "manifests" / f"n6_k1-{name}_s0.csv")
        generated = [r["path"] for r in rows if r["source"] == name]
        assert len(generated) == 12 and all(p.startswith(str(src)) for p in generated)
    summary = (out / "summary.md").read_text()
    assert "real 6/class, proc: best k" in summary and "real 6/class, other: best k" in summary
    assert (out / "accuracy_vs_k.png").is_file()
    with pytest.raises(FerkitError, match="source name"):
        StudyConfig(real_train="a", val="b", test="c", synthetic=["9lives=x"], out="o")


def test_study_runs_follow_the_recipe_with_augmentation_only_in_its_arm(faces, tmp_path):
    out = tmp_path / "recipe"
    args = _study_args(faces, out, "--ratios", "0,1", "--seeds", "1", "--real-per-class", "6", "--recipe", "fer2013",
                       "--no-synthetic-arm")
    assert run(args) == 0
    configs = {p.parent.name: json.loads(p.read_text()) for p in (out / "runs").glob("*/config.json")}
    assert set(configs) == {"n6_k0_s0", "n6_aug_s0", "n6_k1_s0"}
    for name, c in configs.items():
        assert c["recipe"] == "fer2013" and c["optimizer"] == "sgd" and c["arch"] == "tiny" and c["epochs"] == 1
        assert (c["augment"], c["erase"]) == ((True, 0.5) if "aug" in name else (False, 0.0))
    saved = json.loads((out / "study.json").read_text())
    assert saved["identity"]["recipe"] == "fer2013" and saved["identity"]["train"]["lr"] == 0.05


def test_study_steps_give_every_run_the_same_number_of_updates(faces, tmp_path, capsys):
    out = tmp_path / "steps"
    args = _study_args(faces, out, "--ratios", "0,2", "--seeds", "1", "--real-per-class", "6", "--no-augment-arm",
                       "--no-synthetic-arm", "--batch-size", "4")
    i = args.index("--epochs")
    args = args[:i] + ["--steps", "18"] + args[i + 2:]
    assert run(args) == 0
    assert "--steps 18: 6 epochs of 12 images, 2 epochs of 36 images" in capsys.readouterr().err
    # 12 real images = 3 batches of 4 an epoch, + 2 x generated = 9: 18 steps are 6 and 2 epochs
    runs = {r["setting"]: r for r in read_rows(out / "runs.csv")}
    assert (runs["k0"]["n_train"], runs["k0"]["epochs"], runs["k0"]["epochs_run"]) == ("12", "6", "6")
    assert (runs["k2"]["n_train"], runs["k2"]["epochs"], runs["k2"]["epochs_run"]) == ("36", "2", "2")
    assert json.loads((out / "runs" / "n6_k0_s0" / "config.json").read_text())["epochs"] == 6
    assert "about 18 optimiser steps per run" in (out / "summary.md").read_text()
    saved = json.loads((out / "study.json").read_text())["identity"]
    assert saved["steps"] == 18 and "epochs" not in saved["train"]
    capsys.readouterr()
    args[args.index("--steps") + 1] = "30"
    assert "different settings (steps)" in _one_line_error(capsys, run(args))
    with pytest.raises(FerkitError, match="--epochs or --steps, not both"):
        StudyConfig(real_train="a", val="b", test="c", synthetic=["x"], out="o", steps=10, train=dict(epochs=2))
    with pytest.raises(FerkitError, match="steps must be at least 1"):
        StudyConfig(real_train="a", val="b", test="c", synthetic=["x"], out="o", steps=0)
    assert StudyConfig(real_train="a", val="b", test="c", synthetic=["x"], out="o").identity().get("steps", 0) == 0
    assert "--epochs or --steps, not both" in _one_line_error(capsys, run(args + ["--epochs", "2"]))
