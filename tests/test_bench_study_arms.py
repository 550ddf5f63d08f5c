"""benchmarks/bench_ckplus_study.py's arms: each one a `ferkit study --arm` the study accepts."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from ferkit.experiments import parse_arm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench = pytest.importorskip("bench_ckplus_study")

SOURCES = {"gan": "edits/fold{fold}", "procedural": "proc/"}


def _args(**kw) -> argparse.Namespace:
    base = dict(arms=["real", "aug", "over", "gan", "gan+over", "procedural", "finetune"], ratios="1,5",
                procedural_ratios="1", oversample="disgusted=5,fearful=5", init="ferplus-vgg16", ft_lr=None,
                finetune_arms=["real", "over", "gan", "gan+over"], seeds=3, scratch_seeds=1, folds="5",
                group_by="^([^_]+)_", fold_seed=0, classes="angry,happy", image_size=48, recipe="fer2013", jobs=2,
                steps=120, epochs=None, arch=None, batch_size=None, lr=None, patience=None, monitor=None,
                model_arg=["width=16"])
    return argparse.Namespace(**{**base, **kw})


def test_arms_of_the_wild_study_parse_and_fine_tuned_ones_keep_their_seeds():
    only = ("angry", "disgusted", "fearful", "happy", "sad", "surprised")
    specs = bench.arm_specs(_args(), SOURCES, only)
    assert list(specs) == ["over", "gan1", "gan5", "proc1", "gan1+over", "ft", "ft-over", "ft-gan1", "ft-gan5",
                           "ft-gan1+over"]
    arms = {name: parse_arm(f"{name}:{spec}", tuple(SOURCES)) for name, spec in specs.items()}
    assert arms["gan5"].only == only and arms["gan5"].k == 5 and arms["proc1"].only == ()
    assert arms["gan1+over"].train == {"oversample": "disgusted=5,fearful=5"} and arms["gan1+over"].k == 1
    assert arms["ft-gan1+over"].train == {"init": "ferplus-vgg16", "oversample": "disgusted=5,fearful=5"}
    assert {n: a.seeds for n, a in arms.items()} == {n: 3 if n.startswith("ft") else 0 for n in arms}
    cmd = bench.study_command(_args(), Path("sfew"), Path("w"), SOURCES, only)
    assert cmd[cmd.index("--seeds") + 1] == "1" and cmd.count("--arm") == len(specs)


def test_without_oversampling_or_a_generator_lacking_classes_the_arms_are_as_before():
    specs = bench.arm_specs(_args(arms=["real", "gan", "finetune"], oversample=None, scratch_seeds=None,
                                  finetune_arms=["real", "gan"]), {"gan": "e"})
    assert specs == {"gan1": "source=gan,k=1", "gan5": "source=gan,k=5", "ft": "init=ferplus-vgg16",
                     "ft-gan1": "init=ferplus-vgg16,source=gan,k=1", "ft-gan5": "init=ferplus-vgg16,source=gan,k=5"}


def test_each_generated_arm_is_compared_with_its_own_baselines():
    settings = ["k0", "aug", "over", "gan1", "gan1+over", "fer1", "proc1", "ft", "ft-over", "ft-gan1", "ft-gan1+over"]
    assert bench.baselines("gan1", settings) == ["aug", "fer1", "proc1"]
    assert bench.baselines("gan1+over", settings) == ["over", "gan1"]
    assert bench.baselines("ft-gan1+over", settings) == ["ft", "ft-over", "ft-gan1", "gan1+over"]
    assert bench.baselines("ft-over", settings) == ["ft", "over"]
    assert bench.baselines("over", settings) == [] and bench.baselines("ft", settings) == []
    assert bench.baselines("proc1", settings) == ["aug", "gan1", "fer1"]
    assert bench.baselines("ft-proc1", settings + ["ft-proc1"]) == ["ft", "ft-gan1", "proc1"]


def test_compare_states_each_pair_once_and_plots_fine_tuned_arms_against_fine_tuning(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    acc = {"k0": 0.3, "aug": 0.31, "gan1": 0.32, "proc1": 0.28, "ft": 0.5, "ft-gan1": 0.49, "ft-proc1": 0.52}
    rows = [f"f{f}_{s}_s0,{s},{s},{f},0,{a + 0.01 * f:.4f},{a - 0.1:.4f}\n" for s, a in acc.items() for f in (1, 2, 3)]
    (study / "runs.csv").write_text("run_id,setting,label,fold,seed,accuracy,macro_f1\n" + "".join(rows))
    text = bench.compare(study, tmp_path)
    pairs = [tuple(cell.strip("` ") for cell in line.split("|")[1:3]) for line in text.splitlines()[2:]
             if line.startswith("| `")]
    assert ("gan1", "proc1") in pairs and ("proc1", "gan1") not in pairs
    assert len(pairs) == len(set(pairs)) and ("ft-proc1", "ft") in pairs and ("ft-gan1", "ft") in pairs
    line = next(x for x in text.splitlines() if x.startswith("| `ft-proc1` | `ft` |"))
    assert line.split("|")[3].strip().startswith("+0.0200")     # 0.52 - 0.50 on every fold
    from PIL import Image

    assert Image.open(tmp_path / "compare.png").size[0] > 1200     # two panels side by side


def test_runs_of_two_studies_join_once_and_must_agree(tmp_path):
    def write(study, rows):
        study.mkdir()
        (study / "runs.csv").write_text("run_id,setting,accuracy\n" + "".join(f"{r},{s},{a}\n" for r, s, a in rows))

    write(tmp_path / "a", [("f1_k0_s0", "k0", "0.5"), ("f1_ft_s0", "ft", "0.7"), ("f1_x_s0", "x", "")])
    write(tmp_path / "b", [("f1_k0_s0", "k0", "0.5"), ("f1_gan5_s0", "gan5", "0.4")])
    runs = bench.read_runs([tmp_path / "a", tmp_path / "b"])
    assert [(r["run_id"], Path(r["study"]).name) for r in runs] == [("f1_k0_s0", "a"), ("f1_ft_s0", "a"),
                                                                     ("f1_gan5_s0", "b")]
    write(tmp_path / "c", [("f1_k0_s0", "k0", "0.6")])
    with pytest.raises(SystemExit, match="not the same run"):
        bench.read_runs([tmp_path / "a", tmp_path / "c"])
