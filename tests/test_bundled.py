"""The models that ship inside ferkit: present, small, load with no argument, read real faces."""
import json

import numpy as np
import pytest
from conftest import face_photo

from ferkit import Recognizer
from ferkit.bundled import BUNDLED, DEFAULT_MODEL, bundled_path, is_model_path, resolve_model_path
from ferkit.cli import run
from ferkit.errors import FerkitError
from ferkit.labels import EXPRESSIONS


@pytest.fixture(scope="module")
def recognizer():
    return Recognizer.load()


def test_bundled_weights_are_small_fp16_safetensors_with_a_record():
    from safetensors import safe_open

    from ferkit.models import read_checkpoint_record
    path = bundled_path()
    assert path == BUNDLED[DEFAULT_MODEL].path and path.suffix == ".safetensors"
    assert path.stat().st_size <= 8 * 1024 * 1024
    with safe_open(str(path), framework="pt") as fh:
        assert {str(fh.get_slice(k).get_dtype()) for k in fh.keys() if "num_batches" not in k} == {"F16"}
    rec = read_checkpoint_record(path)
    assert rec.classes == EXPRESSIONS and rec.image_size == 48 and rec.arch == "vgg"   # FER+: eight classes
    assert rec.train_config["labels"] == "soft" and rec.extra["bundled"]["name"] == DEFAULT_MODEL
    assert rec.val_metrics["val_acc"] > 0.8             # FER+ validation (wild-vgg16: 0.815; its card says why)
    assert rec.train_config["extra_train_dirs"]          # trained on several domains
    assert 0.3 < rec.temperature < 3 and rec.calibration["after"]["ece"] < 0.1


def test_the_default_ships_its_onnx_export_which_gives_the_same_probabilities():
    pytest.importorskip("onnxruntime")
    from ferkit.export import export_beside, file_sha256
    from ferkit.models import open_model

    path = bundled_path()
    side = export_beside(path)
    assert side.is_file() and side.stat().st_size <= 8 * 1024 * 1024
    auto, torch_model = open_model(), open_model(backend="torch")
    assert auto.name == "onnx" and auto.record.extra["source_sha256"] == file_sha256(path)
    faces = np.random.default_rng(0).integers(0, 256, (16, 48, 48), dtype=np.uint8)
    assert np.allclose(auto.probabilities(faces), torch_model.probabilities(faces), atol=1e-4)
    assert np.array_equal(auto.probabilities(faces).argmax(1), torch_model.probabilities(faces).argmax(1))


@pytest.mark.parametrize("name", [n for n, m in BUNDLED.items() if m.kind == "classifier"])
def test_every_bundled_classifier_loads_and_is_under_8_mb(name):
    assert bundled_path(name).stat().st_size <= 8 * 1024 * 1024
    r = Recognizer.load(name, detect=False)
    probs = r.probabilities(np.full((2, 48, 48), 128, np.uint8))
    assert probs.shape == (2, len(r.classes)) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_load_with_no_argument_and_by_name(recognizer):
    assert recognizer.classes == EXPRESSIONS and recognizer.image_size == 48
    assert Recognizer.load(DEFAULT_MODEL).classes == recognizer.classes
    assert resolve_model_path(None) == resolve_model_path(DEFAULT_MODEL) == bundled_path()
    assert is_model_path(DEFAULT_MODEL) and not is_model_path(str(face_photo()))
    with pytest.raises(FerkitError, match="unknown bundled model"):
        bundled_path("fer2013-huge")


def test_reads_a_real_photo_as_a_person_would(recognizer):
    """Grace Hopper's portrait (matplotlib's sample data): one face, a calm closed-mouth smile."""
    faces = recognizer.predict(face_photo())
    assert len(faces) == 1
    face = faces[0]
    assert face.label in ("neutral", "happy")
    assert sum(face.probabilities.values()) == pytest.approx(1, abs=1e-4)
    assert face.probabilities[face.label] == max(face.probabilities.values())


def test_generated_faces_are_read_in_the_direction_of_their_expression(recognizer):
    """The procedural generator's strongest smiles look happier to the default model than its
    strongest frowns, and its surprise (open mouth, raised brows) more surprised than either."""
    from ferkit.synth import render_face, sample_face_params

    def mean_probs(cls):
        faces = [render_face(sample_face_params(i, cls, i, 0, (0.9, 1.0)), 96) for i in range(12)]
        return {c: np.mean([f.probabilities[c] for f in recognizer.predict_faces(faces)]) for c in recognizer.classes}
    happy, sad, surprised = mean_probs("happy"), mean_probs("sad"), mean_probs("surprised")
    assert happy["happy"] > sad["happy"]
    assert surprised["surprised"] > max(happy["surprised"], sad["surprised"])


def test_predict_and_models_commands_without_a_model(tmp_path, capsys):
    assert run(["predict", str(face_photo()), "--out", str(tmp_path / "p"), "--annotate", "--no-progress"]) == 0
    import csv

    with open(tmp_path / "p" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["label"] in ("neutral", "happy")
    assert (tmp_path / "p" / "annotated" / face_photo().name).is_file()
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    # the checkpoint, or its ONNX export beside it when onnxruntime is installed
    assert summary["model"] in (str(bundled_path()), str(bundled_path().with_suffix(".onnx")))
    assert summary["complete"] is True
    capsys.readouterr()
    assert run(["models", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"vgg", "resnet", "seed", "tiny"} <= {m["name"] for m in info["architectures"]}
    assert info["bundled"][0]["name"] == DEFAULT_MODEL and info["bundled"][0]["available"]
