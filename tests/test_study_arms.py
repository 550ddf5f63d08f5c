"""Study arms are training settings: an arm is a data mix plus any TrainConfig overrides; a study
is a data plan, base settings and arms; older study.json files (training settings at their top
level) resume; the Machine part keeps config.json flat."""
from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import pytest
from conftest import make_folder

from ferkit.cli import run
from ferkit.errors import FerkitError
from ferkit.experiments import PER_RUN_FIELDS, StudyConfig, arm_definition, parse_arm, plan_study, run_study
from ferkit.train import TrainConfig
from ferkit.train.config import Machine, setting_help
from ferkit.train.gan import GanConfig

#: A value for each TrainConfig field that differs from what the study's base settings give it
#: (arm text, expected value); fields that need a companion carry it in the text.
SAMPLES = {
    "arch": ("arch=vgg", "vgg"),
    "model_args": ("arch=vgg,model_args=width=8", {"width": 8}),
    "image_size": ("image_size=48", 48),                 # the study's own size: an arm cannot decode anew
    "init": ("init=fer2013-vgg", "fer2013-vgg"),
    "input_mean": ("input_mean=0.5", 0.5),
    "input_std": ("input_std=0.25", 0.25),
    "epochs": ("epochs=7", 7),
    "batch_size": ("batch_size=32", 32),
    "patience": ("patience=0", 0),
    "monitor": ("monitor=val_acc", "val_acc"),
    "train_limit": ("train_limit=100", 100),
    "val_limit": ("val_limit=50", 50),
    "optimizer": ("optimizer=sgd", "sgd"),
    "lr": ("lr=0.01", 0.01),
    "momentum": ("momentum=0.5", 0.5),
    "weight_decay": ("weight_decay=0.0005", 0.0005),
    "schedule": ("schedule=cosine", "cosine"),
    "lr_decay": ("lr_decay=0.001", 0.001),
    "warmup_epochs": ("warmup_epochs=2", 2.0),
    "plateau_patience": ("plateau_patience=4", 4),
    "grad_clip": ("grad_clip=5", 5.0),
    "ema": ("ema=0.999", 0.999),
    "freeze_bn": ("freeze_bn", True),
    "label_smoothing": ("label_smoothing=0.1", 0.1),
    "class_weights": ("class_weights", True),
    "oversample": ("oversample=disgusted=5,fearful=5", "disgusted=5,fearful=5"),
    "labels": ("labels=soft", "soft"),
    "teacher": ("teacher=fer2013-vgg", "fer2013-vgg"),
    "distill_alpha": ("teacher=fer2013-vgg,distill_alpha=0.3", 0.3),
    "distill_temperature": ("teacher=fer2013-vgg,distill_temperature=3", 3.0),
    "consistency": ("consistency=0.5", 0.5),
    "consistency_shift": ("consistency=0.5,consistency_shift=2", 2.0),
    "augment": ("augment", True),
    "rotate": ("rotate=5", 5.0),
    "shift": ("shift=0.1", 0.1),
    "zoom": ("zoom=0.1", 0.1),
    "aspect": ("aspect=0.1", 0.1),
    "erase": ("erase=0.25", 0.25),
    "mixup": ("mixup=0.2", 0.2),
    "photo": ("photo=0.15", 0.15),
    "cutmix": ("cutmix=1", 1.0),
    "precision": ("precision=fp32", "fp32"),
    "device": ("device=cpu", "cpu"),
    "strict": ("strict", True),
}


def _study(**kw) -> StudyConfig:
    base = dict(real_train="a", val="b", test="c", synthetic=["x"], out="o", train={"image_size": 48})
    return StudyConfig(**{**base, **kw})


def test_every_train_setting_can_be_set_per_arm():
    seen = set()
    for f in fields(TrainConfig):
        seen.add(f.name)
        if f.name in PER_RUN_FIELDS:     # the study sets these for each run: one clear line
            with pytest.raises(FerkitError, match=f"--arm a: {f.name} is set by the study for each run"):
                parse_arm(f"a:{f.name}=1")
            continue
        if f.name == "recipe":           # an arm may train with another recipe (its values under the arm's)
            cfg = _study(arms=["a:recipe=fer2013"])
            assert cfg.train_config(cfg.custom_arms()[0], train_dir="-", val_dir="-", out="-").recipe == "fer2013"
            continue
        text, want = SAMPLES[f.name]
        cfg = _study(arms=[f"a:{text}"])
        run_cfg = cfg.train_config(cfg.custom_arms()[0], train_dir="-", val_dir="-", out="-")
        got = getattr(run_cfg, f.name)
        if isinstance(want, dict):
            assert {k: got[k] for k in want} == want, f.name
        else:
            assert got == want, f.name
        base = cfg.train_config(None, train_dir="-", val_dir="-", out="-")
        assert getattr(base, f.name) != want or f.name == "image_size", f.name   # only the arm changed it
    assert seen - set(PER_RUN_FIELDS) - {"recipe"} == set(SAMPLES)   # no field left untried


@pytest.mark.parametrize("spec, words", [
    ("x:lr=abc", "--arm x: lr 'abc' is not a number"),
    ("x:epochs=2.5", "--arm x: epochs '2.5' is not a whole number"),
    ("x:colour=red", "--arm x: unknown key 'colour'"),
    ("x:seed=3", "--arm x: seed is set by the study for each run"),
    ("x:monitor=val_f1", "--arm x: unknown monitor"),
    ("x:oversample=disgusted", "--arm x: --oversample: expected CLASS=N pairs"),
    ("x:augment=maybe", "--arm x: augment takes no value, or true/false"),
    ("x:lr", "--arm x: lr needs a value"),
    ("x:lr=0.1,lr=0.2", "--arm x: lr is given twice"),
    ("x:image_size=64", "--arm x: image size 64 differs from the study's 48 px"),
    ("x:only=disgusted,k=0", "--arm x: only= picks the classes of the generated faces; give k > 0 too"),
    ("x:lr=0.1,seeds=0", "--arm x: seeds must be 1 to 1000"),
    ("x:lr=0.1,seeds=two", "--arm x: seeds 'two' is not a whole number"),
])
def test_bad_arm_overrides_are_one_line(spec, words):
    with pytest.raises(FerkitError) as exc:
        _study(arms=[spec], ratios="0")
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_arm_specs_mix_data_and_settings():
    arm = parse_arm("gan+over:synthetic=gan,k=2,only=disgust,fearful,oversample=disgusted=5,fearful=5",
                    ("gan", "proc"))
    assert (arm.source, arm.k, arm.only) == ("gan", 2.0, ("disgusted", "fearful"))
    assert arm.train == {"oversample": "disgusted=5,fearful=5"}
    assert parse_arm("s:labels=soft,class-weights").train == {"labels": "soft", "class_weights": True}
    assert parse_arm("t:teacher=none").train == {"teacher": None}
    # the arms of studies written before arms took settings read as the same definitions
    old = {"name": "ft", "label": "ft: fine-tune m + 2x gan", "real": True, "k": 2.0, "augment": True,
           "source": "gan", "init": "m", "lr": 0.01, "custom": True}
    new = parse_arm("ft:init=m,source=gan,k=2,augment,lr=0.01", ("gan",))
    assert arm_definition(old) == new.definition()


def test_an_arm_with_only_draws_k_times_each_named_class(tmp_path):
    classes = ["angry", "disgusted", "happy"]
    real = make_folder(tmp_path / "real", classes, 6)
    gen = make_folder(tmp_path / "gen", ["disgusted"], 20, seed=3)
    from ferkit.data import load_dataset

    cfg = StudyConfig(real_train=str(real), val=str(real), test=str(real), synthetic=[f"gan={gen}"],
                      out=str(tmp_path / "o"), ratios="0", seeds=2, classes=classes, augment_arm=False,
                      synthetic_arm=False, arms=["g2:source=gan,k=2,only=disgusted"],
                      train={"arch": "tiny", "image_size": 16})
    faces = load_dataset(real, cfg.classes, 16, progress=False)
    pool = load_dataset(gen, ("disgusted",), 16, progress=False)
    pool.labels = np.full(len(pool), cfg.classes.index("disgusted"))
    pool.classes = cfg.classes
    specs = {s.run_id: s for s in plan_study(cfg, faces, {"gan": pool})}
    assert len(specs["nall_g2_s0"].synth_idx) == 12 and len(specs["nall_k0_s0"].synth_idx) == 0
    assert set(specs["nall_g2_s0"].synth_idx) != set(specs["nall_g2_s1"].synth_idx)   # each seed its own draw


def test_a_source_needs_only_the_classes_its_arms_draw(tmp_path, capsys):
    """A generator that knows no neutral: its edits feed arms with only=, the study trains neutral too."""
    classes = ["angry", "happy", "neutral"]
    real = make_folder(tmp_path / "real", classes, 4)
    gen = make_folder(tmp_path / "gen", ["angry", "happy"], 8, seed=3)
    base = dict(real_train=str(real), val=str(real), test=str(real), synthetic=[f"gan={gen}"], ratios="0",
                classes=classes, augment_arm=False, synthetic_arm=False, train={"arch": "tiny", "image_size": 16})
    cfg = StudyConfig(**base, out=str(tmp_path / "o"), arms=["g:source=gan,k=1,only=angry,happy", "o:augment"])
    assert cfg.drawn_classes(tuple(classes)) == {"gan": ("angry", "happy")}
    both = StudyConfig(**base, out=str(tmp_path / "o2"), arms=["g:source=gan,k=1"])
    assert both.drawn_classes(tuple(classes)) == {"gan": tuple(classes)}
    args = ["study", "--real-train", str(real), "--val", str(real), "--test", str(real), "--synthetic", f"gan={gen}",
            "--ratios", "0", "--seeds", "1", "--no-augment-arm", "--no-synthetic-arm", "--classes", ",".join(classes),
            "--arch", "tiny", "--epochs", "1", "--image-size", "16", "--batch-size", "8", "--no-progress"]
    assert run([*args, "--out", str(tmp_path / "s"), "--arm", "g:source=gan,k=1,only=angry,happy"]) == 0
    counts = json.loads((tmp_path / "s" / "runs" / "nall_g_s0" / "config.json").read_text())["train_counts"]
    assert counts == {"angry": 8, "happy": 8, "neutral": 4}
    capsys.readouterr()   # an arm that draws every class from it still needs neutral: one line, nothing run
    assert run([*args, "--out", str(tmp_path / "t"), "--arm", "g:source=gan,k=1"]) == 1
    err = capsys.readouterr().err
    assert "no images of class neutral" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t" / "runs").exists()


def test_an_arm_may_run_more_seeds_than_the_study(tmp_path):
    """seeds=N: that arm's runs take seeds 0..N-1, the others the study's; not part of its definition."""
    classes = ["angry", "happy"]
    real = make_folder(tmp_path / "real", classes, 6)
    from ferkit.data import load_dataset

    arm = parse_arm("ft:lr=0.01,seeds=3")
    assert arm.seeds == 3 and arm.definition() == parse_arm("ft:lr=0.01").definition()
    cfg = StudyConfig(real_train=str(real), val=str(real), test=str(real), out=str(tmp_path / "o"), ratios="0",
                      seeds=1, classes=classes, augment_arm=False, synthetic_arm=False,
                      arms=["ft:lr=0.01,seeds=3", "over:oversample=happy=2"], train={"arch": "tiny", "image_size": 16})
    faces = load_dataset(real, cfg.classes, 16, progress=False)
    runs = sorted(s.run_id for s in plan_study(cfg, faces, {}))
    assert runs == ["nall_ft_s0", "nall_ft_s1", "nall_ft_s2", "nall_k0_s0", "nall_over_s0"]


def test_steps_count_the_copies_oversampling_adds(tmp_path):
    """--steps gives an oversampling arm about as many updates as real only, not more."""
    import csv

    real = make_folder(tmp_path / "real", ["angry", "happy"], 6)
    out = tmp_path / "s"
    args = ["study", "--real-train", str(real), "--val", str(real), "--test", str(real), "--out", str(out),
            "--ratios", "0", "--seeds", "1", "--no-augment-arm", "--no-synthetic-arm", "--arch", "tiny",
            "--steps", "6", "--image-size", "16", "--batch-size", "4", "--arm", "over:oversample=happy=2",
            "--no-progress"]
    assert run(args) == 0
    with open(out / "runs.csv", newline="") as fh:
        epochs = {r["setting"]: int(r["epochs"]) for r in csv.DictReader(fh)}
    assert epochs == {"k0": 2, "over": 1}   # 12 faces = 3 batches an epoch; 12 + 2 x 6 copies = 6 batches


def test_study_cli_takes_train_options_and_arms(tmp_path, capsys):
    classes = ["angry", "happy"]
    real = make_folder(tmp_path / "real", classes, 6)
    gen = make_folder(tmp_path / "gen", classes, 6, seed=5)
    out = tmp_path / "s"
    args = ["study", "--real-train", str(real), "--val", str(real), "--test", str(real), "--synthetic", str(gen),
            "--out", str(out), "--ratios", "0", "--seeds", "1", "--no-augment-arm", "--no-synthetic-arm",
            "--arch", "tiny", "--epochs", "1", "--image-size", "16", "--batch-size", "8", "--label-smoothing", "0.1",
            "--checkpoint", "last", "--arm", "over:oversample=happy=2,lr=0.01", "--no-progress"]
    assert run(args) == 0
    base = json.loads((out / "runs" / "nall_k0_s0" / "config.json").read_text())
    over = json.loads((out / "runs" / "nall_over_s0" / "config.json").read_text())
    assert (base["label_smoothing"], base["oversample"], over["oversample"], over["lr"]) == (0.1, None, "happy=2",
                                                                                            0.01)
    assert over["train_counts"]["happy"] == 3 * over["train_counts"]["angry"]   # oversampled in training
    assert json.loads((out / "study.json").read_text())["identity"]["checkpoint"] == "last"
    capsys.readouterr()
    assert run(args[:-3] + ["--arm", "over:oversample=happy=3", "--no-progress"]) == 1
    assert "arm over was defined differently" in capsys.readouterr().err


def _old_format(study_json) -> None:
    """Rewrite a study.json as ferkit wrote it before studies took any training setting."""
    saved = json.loads(study_json.read_text())
    ident = saved["identity"]
    train = ident.pop("train")
    for key in ("arch", "epochs", "batch_size", "patience", "monitor", "lr", "image_size", "precision"):
        ident[key] = train[key]
    ident["train_options"] = {}
    saved["arms"] = {n: {"name": n, "label": a["label"], "real": a["real"], "k": a["k"],
                         "augment": bool(a["train"].get("augment")), "source": a["source"],
                         "init": a["train"].get("init", ""), "lr": a["train"].get("lr"), "custom": True}
                     for n, a in saved["arms"].items()}
    study_json.write_text(json.dumps(saved))


def test_a_study_json_from_before_resumes_or_says_what_changed(tmp_path, capsys):
    classes = ["angry", "happy"]
    real = make_folder(tmp_path / "real", classes, 6)
    gen = make_folder(tmp_path / "gen", classes, 6, seed=5)
    out = tmp_path / "s"

    def study(**train):
        return StudyConfig(real_train=str(real), val=str(real), test=str(real), synthetic=[f"gan={gen}"],
                           out=str(out), ratios="0", seeds=1, augment_arm=False, synthetic_arm=False,
                           arms=["g:source=gan,k=1,lr=0.01"], progress=False,
                           train={"arch": "tiny", "epochs": 1, "image_size": 16, "batch_size": 8, **train})

    res = run_study(study())
    assert res.trained == 2
    _old_format(out / "study.json")
    assert "train_options" in (out / "study.json").read_text()
    res = run_study(study())                      # the older file resumes: nothing trained again
    assert (res.trained, res.skipped) == (0, 2)
    saved = json.loads((out / "study.json").read_text())
    assert "train_options" not in saved["identity"] and saved["identity"]["train"]["arch"] == "tiny"
    assert saved["arms"]["g"]["train"] == {"lr": 0.01}   # rewritten as this ferkit writes it
    _old_format(out / "study.json")
    with pytest.raises(FerkitError, match=r"different settings \(train.lr\)"):
        run_study(study(lr=0.5))
    # a training setting added to TrainConfig after the study was written (freeze_bn was): its default
    assert run_study(study()).trained == 0          # study.json as this ferkit writes it
    saved = json.loads((out / "study.json").read_text())
    del saved["identity"]["train"]["freeze_bn"]
    (out / "study.json").write_text(json.dumps(saved))
    assert run_study(study()).trained == 0
    (out / "study.json").write_text(json.dumps(saved))
    with pytest.raises(FerkitError, match=r"different settings \(train.freeze_bn\)"):
        run_study(study(freeze_bn=True))
    (out / "study.json").write_text(json.dumps(saved))
    _old_format(out / "study.json")
    ident = json.loads((out / "study.json").read_text())
    ident["identity"]["arch"] = "no-such-arch"
    (out / "study.json").write_text(json.dumps(ident))
    with pytest.raises(FerkitError, match="written by an older ferkit .* use another --out"):
        run_study(study())


def test_machine_part_is_shared_and_config_json_stays_flat():
    """Training and the GAN take device, precision, threads from one Machine part, described once;
    a run's config.json keeps them at its top level, as runs saved before the part existed have them."""
    machine = {f.name for f in fields(Machine)}
    assert machine <= {f.name for f in fields(TrainConfig)} and machine <= {f.name for f in fields(GanConfig)}
    assert all(setting_help(f) for f in fields(TrainConfig))      # every option's help written once, there
    cfg = TrainConfig("t", "v", "o", device="cpu")
    saved = {k: v for k, v in cfg.identity().items()}             # what an older config.json holds
    assert "machine" not in saved and saved["device"] == "cpu" and saved["precision"] == "auto"
    assert TrainConfig("t", "v", "o", device="cpu").matches(saved)
    assert TrainConfig("t", "v", "o", device="cpu", precision="fp32").differences(saved) == ["precision"]
    with pytest.raises(FerkitError, match="unknown device"):
        GanConfig(data="d", out="o", device="tpu")
