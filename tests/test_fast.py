"""The fast inference path: the `lite` student family, batch-norm folding in the torch backend,
int8 export, onnxruntime picked automatically for a checkpoint with its export beside it, and
predict_faces without per-face work for ready faces."""
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_folder

from ferkit.errors import FerkitError
from ferkit.models import CheckpointRecord, InputSpec, create_model, list_models, save_checkpoint

CLASSES = ("angry", "happy", "sad")


def _random_bn(model):
    for m in model.modules():   # trained-looking statistics, so folding has something to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def _checkpoint(path: Path, arch="lite", size=48, seed=0, **args) -> Path:
    torch.manual_seed(seed)
    model = _random_bn(create_model(arch, len(CLASSES), size, **args)).eval()
    return save_checkpoint(model, path, CheckpointRecord(arch, CLASSES, InputSpec(size, mean=(0.5,), std=(0.25,)),
                                                         model_args=args))


# ----------------------------------------------------------------------------- students
@pytest.mark.parametrize("size", [48, 64])
@pytest.mark.parametrize("args", [{}, {"width": 24}, {"separable_from": 0}, {"separable_from": 4}])
def test_lite_builds_and_runs_at_48_and_64_px(size, args):
    assert "lite" in list_models()
    model = create_model("lite", 8, size, **args).eval()
    with torch.no_grad():
        assert model(torch.rand(3, 1, size, size)).shape == (3, 8)
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert bool(depthwise) == (args.get("separable_from", 2) < 4)   # separable_from=4: a plain narrow VGG
    vgg = create_model("vgg", 8, size, width=32)
    n = sum(p.numel() for p in model.parameters())
    assert n < sum(p.numel() for p in vgg.parameters()) / 3


def test_lite_refuses_bad_arguments():
    with pytest.raises(FerkitError, match="separable_from"):
        create_model("lite", 7, 48, separable_from=5)
    with pytest.raises(FerkitError, match="width"):
        create_model("lite", 7, 48, width=0)


@pytest.mark.parametrize("arch,args", [("lite", {}), ("lite", {"separable_from": 0}), ("vgg", {"width": 8})])
def test_torch_backend_folds_batch_norm_exactly(tmp_path, arch, args):
    """The torch backend runs the model with every batch norm folded into its convolution, in
    channels_last, and gives the unfolded model's logits to 1e-4."""
    from ferkit.models import load_checkpoint
    from ferkit.predict import open_backend

    ckpt = _checkpoint(tmp_path / "m.safetensors", arch, **args)
    be = open_backend(ckpt, "torch", device="cpu", precision="fp32")
    assert not [m for m in be.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    faces = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    model, rec = load_checkpoint(ckpt)
    with torch.no_grad():
        want = model(rec.input.to_tensor(faces)).numpy()
    assert np.abs(be.logits(faces) - want).max() < 1e-4


# ----------------------------------------------------------------------------- int8
def _needs_onnx():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    _needs_onnx()
    from ferkit.train import TrainConfig, train

    root = tmp_path_factory.mktemp("fast")
    tr = make_folder(root / "train", CLASSES, 24, seed=1)
    va = make_folder(root / "val", CLASSES, 16, seed=2)
    train(TrainConfig(str(tr), str(va), str(root / "run"), arch="tiny", epochs=2, image_size=32, batch_size=16,
                      lr=3e-3, progress=False))
    return root


def test_int8_export_agrees_with_fp32_on_most_faces(trained):
    import onnx

    from ferkit.predict import Recognizer
    from ferkit.quantize import export_int8

    out = trained / "m.int8.onnx"
    info = export_int8(trained / "run", out, calib_dir=trained / "val", calib_faces=24)
    assert info["calibration"]["n"] == 24 and "--calib-dir" in info["calibration"]["source"]
    assert info["check"]["held_out"] and info["check"]["n"] == 48 - 24
    assert info["check"]["top1_agreement"] >= 0.8
    assert info["int8_bytes"] < info["fp32_bytes"]
    proto = onnx.load(str(out))
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    r = Recognizer.load(out, detect=False)
    assert r.backend.record.extra["quantization"]["check"]["top1_agreement"] == info["check"]["top1_agreement"]
    assert r.classes == CLASSES and len(r.predict_faces(np.zeros((2, 32, 32), np.uint8))) == 2


def test_int8_export_without_faces_uses_procedural_ones(tmp_path):
    _needs_onnx()
    from ferkit.quantize import export_int8

    ckpt = _checkpoint(tmp_path / "m.safetensors", "tiny", size=32)
    info = export_int8(ckpt, tmp_path / "m.onnx", calib_faces=8, check_faces=4)
    assert "procedurally generated" in info["calibration"]["source"]
    assert not info["check"]["held_out"] and info["check"]["n"] == 12


def test_export_int8_cli_and_bad_input(trained, tmp_path, capsys):
    from ferkit.cli import run

    out = tmp_path / "q.onnx"
    assert run(["export", str(trained / "run"), "--int8", "--calib-dir", str(trained / "val"), "--calib-faces", "20",
                "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "int8" in text and "same top class on" in text and out.is_file()
    bad = tmp_path / "bad.onnx"
    assert run(["export", str(trained / "run"), "--calib-dir", str(trained / "val"), "--out", str(bad)]) == 1
    assert run(["export", str(trained / "run"), "--int8", "--calib-dir", str(tmp_path / "nope"),
                "--out", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--int8" in err[0] and "not a folder" in err[1]
    assert not bad.exists() and not list(tmp_path.glob("*.partial*"))


# ----------------------------------------------------------------------------- auto backend
def test_auto_backend_uses_the_export_beside_a_checkpoint(tmp_path, monkeypatch, capfd):
    import sys

    _needs_onnx()

    from ferkit.export import export_onnx
    from ferkit.predict import Recognizer, open_backend

    (tmp_path / "run").mkdir()
    ckpt = _checkpoint(tmp_path / "run" / "best.safetensors")
    assert open_backend(tmp_path / "run").name == "torch"                      # no export yet
    with pytest.raises(FerkitError, match="no ONNX export beside"):
        open_backend(tmp_path / "run", "onnx")
    export_onnx(tmp_path / "run", tmp_path / "run" / "best.onnx")
    r = Recognizer.load(tmp_path / "run", detect=False)
    assert r.backend.name == "onnx" and r.backend.path == tmp_path / "run" / "best.onnx"
    faces = np.random.default_rng(1).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    torch_r = Recognizer.load(ckpt, backend="torch", detect=False)
    assert np.abs(r.probabilities(faces) - torch_r.probabilities(faces)).max() < 1e-4
    assert open_backend(ckpt, precision="auto").name == "torch"              # not fp32: PyTorch
    assert open_backend(ckpt, "torch").name == "torch"
    assert open_backend(ckpt, "onnx").name == "onnx"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)                    # onnxruntime not installed
    assert open_backend(ckpt).name == "torch"
    monkeypatch.delitem(sys.modules, "onnxruntime")
    _checkpoint(ckpt, seed=1)                                                 # retrained: the export is stale
    capfd.readouterr()
    assert open_backend(ckpt).name == "torch"
    assert "not exported from" in capfd.readouterr().err
    with pytest.raises(FerkitError, match="not exported from"):
        open_backend(ckpt, "onnx")


# ----------------------------------------------------------------------------- predict_faces
def test_predict_faces_does_no_per_face_work_for_ready_faces(tmp_path, monkeypatch):
    from ferkit.predict import Recognizer
    from ferkit.predict import recognizer as rec_mod

    r = Recognizer.load(_checkpoint(tmp_path / "m.safetensors"), backend="torch", detect=False)
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (7, 48, 48), dtype=np.uint8)
    want = r.probabilities(faces)
    mixed = [faces[0], np.dstack([faces[1]] * 3), rng.integers(0, 256, (60, 50), dtype=np.uint8)]
    slow = r.predict_faces(mixed)                       # any size and colour: converted and resized
    assert [p.box for p in slow] == [(0, 0, 48, 48), (0, 0, 48, 48), (0, 0, 50, 60)]

    def boom(*a, **k):
        raise AssertionError("per-face conversion or resizing of a ready face")

    monkeypatch.setattr(rec_mod, "to_gray", boom)
    monkeypatch.setattr(rec_mod, "preprocess_gray", boom)
    for given in (faces, list(faces)):
        got = r.predict_faces(given)
        assert [p.label for p in got] == [CLASSES[k] for k in want.argmax(1)]
        assert np.allclose([list(p.probabilities.values()) for p in got], want, atol=1e-6)
        assert got[3].confidence == pytest.approx(float(want[3].max())) and got[3].box == (0, 0, 48, 48)
    assert r.predict_faces(np.zeros((0, 48, 48), np.uint8)) == [] and r.predict_faces([]) == []
