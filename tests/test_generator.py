"""The editing generator's additions: a frozen guide classifier, an attention mask, an identity
loss, `gan evaluate --judge`, a bundled generator opened by name, and their bad input."""
import csv
import json
import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import interrupt_gan_at, make_folder

from ferkit.cli import run
from ferkit.errors import FerkitError, Interrupted
from ferkit.train.gan import GanConfig, GanTrainer, train_gan

CLASSES = ["angry", "happy", "sad"]
TINY = dict(image_size=32, batch_size=8, g_width=8, d_width=8, g_res_blocks=1, d_layers=3, held_out=3,
            log_every=5, checkpoint_every=10, sample_every=10, progress=False, precision="fp32")
ROOT = Path(__file__).resolve().parents[1]


def _classifier(out, data, classes=None, size=32, seed=0):
    from ferkit.train import TrainConfig, train
    train(TrainConfig(str(data), str(data), str(out), arch="tiny", image_size=size, epochs=1, batch_size=16,
                      lr=1e-3, seed=seed, classes=classes, progress=False))
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Faces, a guide (40 px: the GAN's 32 px edits are resized to it), an independent judge, a
    classifier that knows only two of the GAN's classes, and a guided GAN with a mask."""
    root = tmp_path_factory.mktemp("generator")
    faces = make_folder(root / "real", CLASSES, 14, seed=1, size=32)
    d = {"root": root, "faces": faces,
         "guide": _classifier(root / "guide", faces, size=40),
         "judge": _classifier(root / "judge", faces, seed=1),
         "narrow": _classifier(root / "narrow", faces, classes="angry,happy")}
    train_gan(GanConfig(str(faces), str(root / "gan"), iterations=10, guide=str(d["guide"]), mask=True,
                        lambda_id=1.0, **TINY))
    d["gan"] = root / "gan"
    return d


def _trainer(lab, **kw):
    from ferkit.synth.gan import open_classifier
    cfg = GanConfig(str(lab["faces"]), "unused", **{**TINY, **kw})
    guide = None
    if cfg.guide is not None:
        model, rec, _, columns, _ = open_classifier(cfg.guide, tuple(CLASSES), "--guide")
        guide = (model, rec, columns)
    return GanTrainer(cfg, len(CLASSES), torch.device("cpu"), guide=guide)


def _batch(n=8):
    g = torch.Generator().manual_seed(5)
    x = torch.rand(n, 1, 32, 32, generator=g) * 2 - 1
    y = torch.arange(n) % 3
    return x, y, (y + 1) % 3


# ----------------------------------------------------------------------------- guide
def test_guidance_changes_the_generator_loss_and_gradients_and_is_off_by_default(lab):
    assert GanConfig("d", "o").guide is None and "g_guide" not in GanConfig("d", "o").history_fields()
    plain = _trainer(lab)
    assert plain.guide is None
    x, y, t = _batch()
    # the guide's cross-entropy reaches G's weights
    guided = _trainer(lab, guide=str(lab["guide"]))
    ce, acc = guided.guide.loss(guided.G(x, t), t)
    ce.backward()
    grads = [p.grad for p in guided.G.parameters() if p.grad is not None]
    assert ce.item() > 0 and 0 <= acc.item() <= 1 and grads and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in guided.guide.model.parameters())    # the guide stays frozen
    guided.G.zero_grad(set_to_none=True)
    # one step each from the same weights and batch: D takes the same step; G does not, unless the
    # guide's weight is 0 (then the guided run takes exactly the plain run's step)
    zero = _trainer(lab, guide=str(lab["guide"]), lambda_guide=0.0)
    out_plain, out_guided = plain.step(x, y, t), guided.step(x, y, t)
    zero.step(x, y, t)
    assert "g_guide" not in out_plain and out_guided["g_guide"] > 0 and 0 <= out_guided["guide_acc"] <= 1
    for k in ("d_adv", "d_cls", "g_adv", "g_cls", "g_rec"):
        assert out_plain[k] == pytest.approx(out_guided[k], abs=1e-6), k
    same = lambda a, b: all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # noqa: E731
    assert same(plain.D, guided.D) and not same(plain.G, guided.G) and same(plain.G, zero.G)


def test_the_guide_reads_edits_through_its_own_input_contract(lab):
    guided = _trainer(lab, guide=str(lab["guide"]), guide_views=3)
    x = torch.zeros(4, 1, 32, 32)                 # gray faces: 0 in [-1, 1] is pixel 127.5
    views = guided.guide.views_of(x)
    spec = guided.guide.record.input
    assert views.shape == (12, spec.channels, 40, 40)
    expected = spec.normalize(torch.full((1, 1, 1, 1), 0.5))
    assert torch.allclose(views, expected.expand_as(views), atol=1e-5)
    # a face with a bright left half is flipped in some views and shifted in others
    x[..., :16] = 1
    v = guided.guide.views_of(x)
    left = v[..., :, :20].mean((1, 2, 3))
    assert (left > v.mean((1, 2, 3))).any() and (left < v.mean((1, 2, 3))).any()


def test_guided_masked_run_records_what_it_is_and_resumes_exactly(lab, tmp_path, monkeypatch):
    from ferkit.models import read_checkpoint_record
    gan = lab["gan"]
    rec = read_checkpoint_record(gan / "generator.safetensors")
    assert rec.model_args["mask"] is True
    cfg = json.loads((gan / "config.json").read_text())
    assert cfg["guide"] == str(lab["guide"]) and len(cfg["guide_sha256"]) == 64 and cfg["lambda_id"] == 1.0
    with open(gan / "history.csv") as fh:
        header = next(csv.reader(fh))
    assert {"g_guide", "guide_acc", "g_id", "mask_mean", "mask_tv"} <= set(header)
    from PIL import Image
    grid = np.asarray(Image.open(gan / "samples" / "iter_000010.png"))
    assert grid.shape == (22 + 2 * 3 * 64, 64 * (1 + len(CLASSES)))     # each face's row, then its masks
    from ferkit.synth.gan import load_generator
    G, _, _ = load_generator(gan)
    assert G.has_mask

    kw = dict(guide=str(lab["guide"]), mask=True, lambda_id=1.0, **TINY)
    full = train_gan(GanConfig(str(lab["faces"]), str(tmp_path / "full"), iterations=20, **kw))
    real_step = interrupt_gan_at(monkeypatch, 13)
    with pytest.raises(Interrupted, match="keeps the state of iteration 10"):
        train_gan(GanConfig(str(lab["faces"]), str(tmp_path / "cut"), iterations=20, **kw))
    monkeypatch.setattr(GanTrainer, "step", real_step)
    train_gan(GanConfig(str(lab["faces"]), str(tmp_path / "cut"), iterations=20, **kw))
    from safetensors.torch import load_file
    a, b = (load_file(str(tmp_path / r / "generator.safetensors")) for r in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a) and full.iterations == 20

    def history(r):   # every column but the seconds
        return [line.rsplit(",", 1)[0] for line in (tmp_path / r / "history.csv").read_text().splitlines()]
    assert history("full") == history("cut") and len(history("full")) == 5
    # the new options are part of the run's identity: another one is not a resume
    with pytest.raises(FerkitError, match="lambda_id"):
        train_gan(GanConfig(str(lab["faces"]), str(tmp_path / "cut"), iterations=30, **{**kw, "lambda_id": 2.0}))


def test_a_changed_guide_does_not_resume(lab, tmp_path):
    guide = shutil.copytree(lab["guide"], tmp_path / "guide")
    kw = dict(guide=str(guide), **TINY)
    train_gan(GanConfig(str(lab["faces"]), str(tmp_path / "gan"), iterations=10, **kw))
    shutil.copy(lab["judge"] / "best.safetensors", guide / "best.safetensors")       # other weights, same path
    with pytest.raises(FerkitError, match="guide_sha256"):
        train_gan(GanConfig(str(lab["faces"]), str(tmp_path / "gan"), iterations=20, **kw))


# ----------------------------------------------------------------------------- mask and identity
def test_mask_generator_keeps_the_input_where_the_mask_is_zero():
    from ferkit.models.gan import create_generator
    torch.manual_seed(0)
    for size in (48, 64):
        G = create_generator(3, size, width=8, res_blocks=1, mask=True).eval()
        half = torch.zeros(1, 1, size, size)
        half[..., size // 2:] = 1                 # the mask: 0 on the left half, 1 on the right

        class Fixed(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, h):
                return self.m.expand(len(h), -1, -1, -1)
        G.mask_head = Fixed(half)
        x = torch.rand(2, 1, size, size) * 2 - 1
        out, m = G(x, torch.tensor([0, 2]), return_mask=True)
        assert out.shape == x.shape and torch.equal(m, half.expand(2, -1, -1, -1))
        assert torch.equal(out[..., :size // 2], x[..., :size // 2])         # untouched, bit for bit
        assert not torch.allclose(out[..., size // 2:], x[..., size // 2:])
    plain = create_generator(3, 48, width=8, res_blocks=1)
    assert plain.mask_head is None and not any(k.startswith("mask_head") for k in plain.state_dict())


def test_a_residual_generator_adds_its_change_to_the_input(lab, tmp_path):
    from ferkit.models.gan import create_generator
    from ferkit.synth.gan import load_generator
    torch.manual_seed(0)
    G = create_generator(3, 48, width=8, res_blocks=1, residual=True).eval()
    last = G.net[-2]                                   # the 7x7 conv before the tanh
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    x = torch.rand(2, 1, 48, 48) * 2 - 1
    with torch.no_grad():
        assert torch.equal(G(x, torch.tensor([0, 2])), x)           # no change: the input, bit for bit
        last.bias.fill_(0.5)                                        # + 2 tanh(0.5) everywhere, clamped
        assert torch.allclose(G(x, torch.tensor([1, 1])), (x + 2 * np.tanh(0.5)).clamp(-1, 1))
    with pytest.raises(FerkitError, match="not both"):
        create_generator(3, 48, mask=True, residual=True)
    with pytest.raises(FerkitError, match="choose one"):
        GanConfig("d", "o", mask=True, residual=True)
    r = train_gan(GanConfig(str(lab["faces"]), str(tmp_path / "res"), iterations=5, residual=True,
                            **{**TINY, "checkpoint_every": 5}))
    G2, record = load_generator(r.run_dir)[:2]
    assert G2.residual and record.model_args["residual"] is True


def test_the_mask_warmup_holds_the_mask_open_then_lets_it_go(lab):
    x, y, t = _batch()
    tr = _trainer(lab, mask=True, mask_warmup=4)
    opened = []
    for _ in range(6):
        opened.append(tr.mask_open())
        row = tr.step(x, y, t)
        if tr.iteration == 1:
            assert row["mask_mean"] == pytest.approx(1.0)     # fully open: the change branch alone
    assert opened == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert row["mask_mean"] < 1.0                              # free now: the predicted mask
    G = tr.G.eval()
    G.mask_open = 1.0
    with torch.no_grad():                                      # held open = output is the change itself
        _, m = G(x, t, return_mask=True)
        assert torch.equal(m, torch.ones_like(m))
    G.mask_open = 0.0
    assert _trainer(lab, mask=True).mask_open() == 0.0         # no warm-up: free from the start
    with pytest.raises(FerkitError, match="mask-warmup weighs what --mask adds"):
        GanConfig("d", "o", mask_warmup=100)
    with pytest.raises(SystemExit) as info:                    # argparse: one usage line
        run(["gan", "train", "--data", str(lab["faces"]), "--out", str(lab["root"] / "bad-warmup"), "--mask",
             "--mask-warmup", "-3"])
    assert info.value.code == 2
    assert not (lab["root"] / "bad-warmup").exists()


def test_identity_loss_is_the_l1_of_an_own_class_edit(lab):
    x, y, t = _batch()
    with_id, without = _trainer(lab, lambda_id=5.0), _trainer(lab)
    with torch.no_grad():
        expected = (with_id.G(x, y) - x).abs().mean().item()
    out = with_id.step(x, y, t)
    assert out["g_id"] == pytest.approx(expected, rel=1e-5) and "g_id" not in without.step(x, y, t)
    assert not all(torch.equal(p, q) for p, q in zip(with_id.G.parameters(), without.G.parameters()))


def test_mask_losses_are_logged_and_a_64_px_run_works(lab, tmp_path):
    r = train_gan(GanConfig(str(lab["faces"]), str(tmp_path / "g64"), iterations=5, mask=True,
                            **{**TINY, "image_size": 64, "d_layers": 4, "checkpoint_every": 5}))
    row = r.history[-1]
    assert 0 < row["mask_mean"] < 1 and row["mask_tv"] >= 0
    from ferkit.models import read_checkpoint_record
    assert read_checkpoint_record(tmp_path / "g64" / "generator.safetensors").image_size == 64


# ----------------------------------------------------------------------------- judge
def test_gan_evaluate_with_a_judge_reports_per_class(lab, tmp_path, capsys):
    val = make_folder(tmp_path / "val", CLASSES, 6, seed=2, size=32)
    out = tmp_path / "q"
    assert run(["gan", "evaluate", str(lab["gan"]), "--real", str(val), "--judge", str(lab["judge"]),
                "--per-class", "5", "--out", str(out), "--no-progress"]) == 0
    r = json.loads((out / "quality.json").read_text())
    assert r["judge"]["path"] == str(lab["judge"] / "best.safetensors") and r["guide"]["model"] == str(lab["guide"])
    assert set(r["per_class"]) == set(CLASSES)
    for row in r["per_class"].values():
        assert row["edits"] == 5 and 0 <= row["target_read"] <= 1 and 0 <= row["source_kept"] <= 1
        assert row["target_read"] + row["source_kept"] <= 1
        assert 0 < row["cycle_l1"] < 1 and 0 < row["identity_l1"] < 1 and row["kid"] is not None
    acc = r["expression_accuracy"]
    assert acc["generated"] == pytest.approx(np.mean([row["target_read"] for row in r["per_class"].values()]))
    printed = capsys.readouterr().out
    assert "target read" in printed and "source kept" in printed and "identity L1" in printed


def test_the_guide_is_refused_as_the_judge(lab, tmp_path, capsys):
    val = make_folder(tmp_path / "val", CLASSES, 6, seed=2, size=32)
    copy = tmp_path / "copy.safetensors"        # same weights under another name: the hash gives it away
    shutil.copy(lab["guide"] / "best.safetensors", copy)
    for judge in (str(lab["guide"]), str(lab["guide"] / "best.safetensors"), str(copy)):
        capsys.readouterr()
        assert run(["gan", "evaluate", str(lab["gan"]), "--real", str(val), "--judge", judge,
                    "--out", str(tmp_path / "q"), "--no-progress"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "trained to please" in err[0] and "--judge" in err[0], err
    assert not (tmp_path / "q").exists()
    # a generator guided by the default bundled model is not judged by it, by name or by default
    from ferkit.bundled import DEFAULT_MODEL
    from ferkit.synth.quality import evaluate_gan
    train_gan(GanConfig(str(lab["faces"]), str(tmp_path / "g"), iterations=5, guide=DEFAULT_MODEL,
                        **{**TINY, "checkpoint_every": 5}))
    for judge in (None, DEFAULT_MODEL):
        with pytest.raises(FerkitError, match="trained to please"):
            evaluate_gan(tmp_path / "g", val, judge=judge, progress=False)
    assert not (tmp_path / "g" / "quality").exists()


# ----------------------------------------------------------------------------- bundled generator
def _bundle(lab, out_dir, *extra):
    return runpy.run_path(str(ROOT / "scripts" / "bundle_generator.py"))["main"](
        [str(lab["gan"]), "--out-dir", str(out_dir), *extra])


def test_a_bundled_generator_opens_by_name_and_edits_generated_faces(lab, tmp_path, monkeypatch, capsys):
    from safetensors import safe_open

    import ferkit.bundled as bundled
    from ferkit.models import read_checkpoint_record
    val = make_folder(tmp_path / "val", CLASSES, 6, seed=2, size=32)
    assert run(["gan", "evaluate", str(lab["gan"]), "--real", str(val), "--judge", str(lab["judge"]),
                "--per-class", "4", "--out", str(tmp_path / "q"), "--no-progress"]) == 0
    weights = tmp_path / "weights"
    assert _bundle(lab, weights, "--quality", str(tmp_path / "q" / "quality.json")) == 0
    path = weights / "fer2013-editor.safetensors"
    assert path.stat().st_size <= 8 * 1024 * 1024
    with safe_open(str(path), framework="pt") as fh:
        assert {str(fh.get_slice(k).get_dtype()) for k in fh.keys()} == {"F16"}
    card = read_checkpoint_record(path).extra["bundled"]
    assert card["name"] == "fer2013-editor" and card["iterations"] == 10 and card["mask"] is True
    assert "--guide guide" in card["command"] and "--mask" in card["command"] and "--lambda-id 1" in card["command"]
    assert "--held-out 3" in card["command"] and "[" not in card["command"]   # a count, not the held-out files
    assert card["quality"]["judge"] == "judge/best.safetensors" and set(card["quality"]["per_class"]) == set(CLASSES)
    assert "guide cross-entropy" in card["losses"] and card["data"]["counts"] == {c: 14 for c in CLASSES}

    monkeypatch.setattr(bundled, "WEIGHTS_DIR", weights)
    assert bundled.resolve_model_path("fer2013-editor") == path and bundled.is_model_path("fer2013-editor")
    assert "fer2013-editor" in bundled.bundled_names("generator")
    assert "fer2013-editor" not in bundled.bundled_names("classifier")
    # faces from ferkit's procedural generator, edited by name
    assert run(["synth", "faces", "--out", str(tmp_path / "proc"), "--per-class", "2", "--size", "32",
                "--classes", ",".join(CLASSES), "--workers", "1", "--no-progress"]) == 0
    assert run(["synth", "edit", "fer2013-editor", "--source", str(tmp_path / "proc"), "--out", str(tmp_path / "ed"),
                "--per-class", "3", "--no-progress"]) == 0
    from ferkit.data import load_dataset
    edited = load_dataset(tmp_path / "ed", tuple(CLASSES), 32, use_cache=False, progress=False)
    assert edited.class_counts() == {c: 3 for c in CLASSES}
    with open(tmp_path / "ed" / "metadata.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["generator"] == str(path) and all(r["class"] != r["source_class"] for r in rows)
    # the same generator from its run folder makes the same faces, up to float16 weights
    assert run(["synth", "edit", str(lab["gan"]), "--source", str(tmp_path / "proc"), "--out", str(tmp_path / "e2"),
                "--per-class", "3", "--no-progress"]) == 0
    ref = load_dataset(tmp_path / "e2", tuple(CLASSES), 32, use_cache=False, progress=False)
    assert np.abs(ref.images.astype(int) - edited.images.astype(int)).max() <= 3
    capsys.readouterr()
    assert run(["models", "--json"]) == 0
    info = {b["name"]: b for b in json.loads(capsys.readouterr().out)["bundled"]}
    assert info["fer2013-editor"]["kind"] == "generator" and info["fer2013-editor"]["available"]
    assert info["fer2013-editor"]["bundled"]["iterations"] == 10 and info["fer2013-vgg"]["kind"] == "classifier"
    assert run(["models"]) == 0
    text = capsys.readouterr().out
    assert "bundled generators" in text and "fer2013-editor" in text.split("bundled generators")[1]
    assert run(["predict", "fer2013-editor", str(val)]) == 1
    assert "is an expression generator" in capsys.readouterr().err


def test_a_bundled_generator_absent_from_the_installation_is_one_line(tmp_path, monkeypatch, capsys):
    import ferkit.bundled as bundled
    monkeypatch.setattr(bundled, "WEIGHTS_DIR", tmp_path / "empty")
    faces = make_folder(tmp_path / "f", CLASSES, 2, size=32)
    assert run(["synth", "edit", "fer2013-editor", "--source", str(faces), "--out", str(tmp_path / "e"),
                "--per-class", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bundled generator 'fer2013-editor' is not in this installation" in err[0]
    assert not (tmp_path / "e").exists()


def test_the_shipped_generator_if_any_is_small_fp16_with_a_card():
    from ferkit.bundled import BUNDLED, bundled_names
    from ferkit.models import read_checkpoint_record
    for name in bundled_names("generator"):
        path = BUNDLED[name].path
        if not path.is_file():
            pytest.skip(f"{name} is not shipped in this tree yet")
        from safetensors import safe_open
        assert path.stat().st_size <= 8 * 1024 * 1024
        with safe_open(str(path), framework="pt") as fh:
            assert {str(fh.get_slice(k).get_dtype()) for k in fh.keys()} == {"F16"}
        rec = read_checkpoint_record(path)
        card = rec.extra["bundled"]
        assert rec.kind == "generator" and card["name"] == name and card["iterations"] and card["command"]
        assert card["quality"] and card["losses"]


def test_the_shipped_editor_edits_a_generated_face_by_name(tmp_path):
    """The bundled editor, as installed, loads by its name and moves a generated face to each other
    expression: new images, of its size, that differ from the source face."""
    import numpy as np

    from ferkit.bundled import BUNDLED
    from ferkit.data import load_dataset
    from ferkit.synth import generate_faces
    if not BUNDLED["fer2013-editor"].path.is_file():
        pytest.skip("fer2013-editor is not shipped in this tree")
    src = generate_faces(tmp_path / "src", per_class=1, classes=["happy", "sad"], size=48, seed=3, workers=1,
                         progress=False)
    out = tmp_path / "edited"
    assert run(["synth", "edit", "fer2013-editor", "--source", str(src), "--out", str(out), "--per-class", "1",
                "--classes", "angry,surprised", "--no-progress"]) == 0
    import cv2
    assert {cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape for p in out.rglob("*.png")} == {(48, 48)}
    edited, source = (load_dataset(str(d), image_size=48, use_cache=False, progress=False) for d in (out, src))
    assert sorted(edited.classes) == ["angry", "surprised"] and len(edited.labels) == 2
    diffs = [np.abs(e.astype(int) - s.astype(int)).mean() for e in edited.images for s in source.images]
    assert min(diffs) > 1.0       # an edit, not a copy of a source face


# ----------------------------------------------------------------------------- bad input
def test_generator_bad_input_is_one_clear_line(lab, tmp_path, capsys):
    faces, gan = str(lab["faces"]), lab["gan"]
    val = make_folder(tmp_path / "val", CLASSES, 6, seed=2, size=32)
    train = ["gan", "train", "--data", faces, "--iterations", "2"]
    cases = [
        ([*train, "--out", str(tmp_path / "g1"), "--guide", str(gan)], "--guide", "is a GAN run"),
        ([*train, "--out", str(tmp_path / "g2"), "--guide", str(gan / "generator.safetensors")], "--guide",
         "is an expression generator"),
        ([*train, "--out", str(tmp_path / "g3"), "--guide", str(lab["narrow"])], "--guide",
         "cannot read sad: its classes are angry, happy"),
        ([*train, "--out", str(tmp_path / "g4"), "--guide", str(tmp_path / "nothing")], "--guide", "does not exist"),
        ([*train, "--out", str(tmp_path / "g5"), "--lambda-guide", "2"], "--lambda-guide", "give --guide MODEL"),
        ([*train, "--out", str(tmp_path / "g6"), "--lambda-tv", "2"], "--lambda-tv", "give --mask"),
        ([*train, "--out", str(tmp_path / "g8"), "--lambda-id", "-1"], "lambda-id", "0 or positive"),
        ([*train, "--out", str(tmp_path / "g9"), "--guide", ""], "--guide", "is empty"),
    ]
    evaluate = ["gan", "evaluate", str(gan), "--real", str(val), "--out", str(tmp_path / "q"), "--no-progress"]
    cases += [
        ([*evaluate, "--judge", str(gan)], "--judge", "is a GAN run"),
        ([*evaluate, "--judge", str(gan / "generator.safetensors")], "--judge", "is an expression generator"),
        ([*evaluate, "--judge", str(lab["narrow"])], "--judge", "cannot read sad"),
        ([*evaluate, "--judge", str(lab["guide"])], "--judge", "trained to please"),
    ]
    for argv, first, message in cases:
        capsys.readouterr()
        assert run(argv) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and first in err[0] and message in err[0] and "Traceback" not in err[0], (argv, err)
    for name in ("g1", "g2", "g3", "g4", "g5", "g6", "g8", "g9", "q"):
        assert not (tmp_path / name).exists(), name
    with pytest.raises(FerkitError, match="guide-views must be 1 to 16"):
        GanConfig(faces, str(tmp_path / "g7"), guide=str(lab["guide"]), guide_views=0)
    # the bundling script: a classifier, or a run without a generator yet, is one line and writes nothing
    for bad, message in ((lab["judge"], "is a classifier run"), (tmp_path / "nowhere", "does not exist")):
        assert runpy.run_path(str(ROOT / "scripts" / "bundle_generator.py"))["main"](
            [str(bad), "--out-dir", str(tmp_path / "w")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "w").exists()
