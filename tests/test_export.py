"""ferkit export --format onnx: metadata, dynamic batch, parity with PyTorch, and --backend onnx."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import face_photo, make_folder  # noqa: E402

from ferkit.cli import run  # noqa: E402
from ferkit.train import TrainConfig, train  # noqa: E402

CLASSES = ("angry", "happy", "sad")



@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    tr = make_folder(root / "train", CLASSES, 16, seed=1)
    va = make_folder(root / "val", CLASSES, 6, seed=2)
    make_folder(root / "test", CLASSES, 5, seed=3)
    train(TrainConfig(str(tr), str(va), str(root / "run"), arch="tiny", epochs=1, image_size=32, batch_size=16,
                      lr=1e-3, progress=False))
    assert run(["export", str(root / "run"), "--format", "onnx", "--out", str(root / "m.onnx")]) == 0
    return root


def _real_faces(root: Path, size: int) -> np.ndarray:
    """Model inputs from real/generated images: the Haar crop of a real photo and the test images."""
    from ferkit.data import load_face, preprocess_gray
    from ferkit.predict import FaceDetector, crop_face, read_gray

    gray = read_gray(face_photo())
    crops = [preprocess_gray(crop_face(gray, b), size) for b in FaceDetector().detect(gray)]
    crops += [load_face(p, size) for p in sorted(root.glob("test/*/*.png"))]
    return (np.stack(crops).astype(np.float32) / 255.0)[:, None]


def test_metadata_and_parity_with_pytorch(exported):
    from ferkit.export import parity
    from ferkit.models import load_checkpoint

    proto = onnx.load(str(exported / "m.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    record = json.loads(meta["ferkit"])
    assert record["classes"] == list(CLASSES) and record["image_size"] == 32
    assert record["input"]["decoding"]["color"] == "gray" and json.loads(meta["classes"]) == list(CLASSES)
    model, rec = load_checkpoint(exported / "run")
    assert parity(model, exported / "m.onnx", rec.input, n=7) < 1e-4                  # random inputs
    real = _real_faces(exported, 32)
    assert len(real) == 16
    assert parity(model, exported / "m.onnx", rec.input, inputs=real) < 1e-4         # real and generated faces
    sess = ort.InferenceSession(str(exported / "m.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 5):                                                            # dynamic batch axis
        logits, probs = sess.run(["logits", "probabilities"], {"input": real[:n]})
        assert logits.shape == probs.shape == (n, 3)
        assert probs.sum(1) == pytest.approx(np.ones(n), abs=1e-5)


@pytest.mark.parametrize("arch", ["seed", "tiny", "vgg", "resnet"])
def test_every_architecture_exports_with_parity(tmp_path, arch):
    """Each architecture, with a normalising input contract (as the fer2013 recipe writes), exports
    to an ONNX graph that takes [0, 1] faces and matches PyTorch within 1e-4."""
    import torch

    from ferkit.export import export_onnx
    from ferkit.models import CheckpointRecord, InputSpec, create_model, resolve_model_args, save_checkpoint

    torch.manual_seed(0)
    args = resolve_model_args(arch, 48, {"width": 8} if arch in ("vgg", "resnet") else {})
    model = create_model(arch, 6, 48, **args).eval()
    for m in model.modules():  # non-trivial batch-norm statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    classes = ("angry", "disgusted", "fearful", "happy", "sad", "surprised")
    rec = CheckpointRecord(arch, classes, InputSpec(48, mean=(0.5,), std=(0.25,)), args)
    save_checkpoint(model, tmp_path / "m.safetensors", rec)
    info = export_onnx(tmp_path / "m.safetensors", tmp_path / "m.onnx")
    assert info["max_abs_diff"] < 1e-4 and info["classes"] == list(classes)


def test_predict_with_onnx_backend_matches_torch(exported, tmp_path):
    from ferkit import Recognizer

    for backend, model in (("torch", exported / "run"), ("onnx", exported / "m.onnx")):
        assert run(["predict", str(model), str(exported / "test"), str(face_photo()), "--backend", backend,
                    "--out", str(tmp_path / backend), "--no-progress"]) == 0
    rows = {}
    for backend in ("torch", "onnx"):
        with open(tmp_path / backend / "predictions.csv", newline="") as fh:
            rows[backend] = list(csv.DictReader(fh))
    assert len(rows["torch"]) == len(rows["onnx"]) == 1  # the photo's one face (pattern images have none)
    t, o = rows["torch"][0], rows["onnx"][0]
    assert (t["x"], t["y"], t["w"], t["h"], t["label"]) == (o["x"], o["y"], o["w"], o["h"], o["label"])
    for c in CLASSES:
        assert float(t[f"p_{c}"]) == pytest.approx(float(o[f"p_{c}"]), abs=1e-4)
    r = Recognizer.load(exported / "m.onnx", backend="onnx")
    assert r.classes == CLASSES and r.image_size == 32
    faces = r.predict_faces([np.full((48, 48), 100, np.uint8), np.zeros((20, 30), np.uint8)])
    assert len(faces) == 2 and all(f.label in CLASSES for f in faces)


@pytest.mark.parametrize("case", ["missing", "out_is_folder", "not_onnx_for_backend", "no_metadata"])
def test_export_and_onnx_backend_errors_are_one_line(exported, tmp_path, capfd, case):
    if case == "missing":
        argv = ["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.onnx")]
    elif case == "out_is_folder":
        argv = ["export", str(exported / "run"), "--out", str(tmp_path)]
    elif case == "not_onnx_for_backend":
        (tmp_path / "bad.onnx").write_text("garbage")
        argv = ["predict", str(tmp_path / "bad.onnx"), str(face_photo()), "--backend", "onnx",
                "--out", str(tmp_path / "o"), "--no-progress"]
    else:  # an ONNX file that ferkit did not write
        proto = onnx.load(str(exported / "m.onnx"))
        del proto.metadata_props[:]
        onnx.save(proto, str(tmp_path / "plain.onnx"))
        argv = ["predict", str(tmp_path / "plain.onnx"), str(face_photo()), "--backend", "onnx",
                "--out", str(tmp_path / "o"), "--no-progress"]
    capfd.readouterr()
    assert run(argv) == 1
    err = capfd.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("ferkit: error: "), err
