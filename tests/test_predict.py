"""ferkit predict / Recognizer: detection, training-identical preprocessing, outputs, video, bad input."""
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import face_photo, make_folder, one_line_error, read_rows

from ferkit.cli import run
from ferkit.train import TrainConfig, train

CLASSES = ("angry", "happy", "sad")



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pred")
    tr = make_folder(root / "train", CLASSES, 16, seed=1)
    va = make_folder(root / "val", CLASSES, 6, seed=2)
    make_folder(root / "test", CLASSES, 6, seed=3, ext=".jpg")
    train(TrainConfig(str(tr), str(va), str(root / "run"), arch="tiny", epochs=1, image_size=32, batch_size=16,
                      lr=1e-3, progress=False))
    return root


def _video(path: Path, frames: int = 12, fps: float = 10.0, face: bool = True) -> Path:
    import cv2

    img = cv2.resize(cv2.imread(str(face_photo())), (256, 300))
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (480, 360))
    assert vw.isOpened()
    for i in range(frames):
        f = np.full((360, 480, 3), 90, np.uint8)
        if face:
            f[30:330, 10 + 8 * i:266 + 8 * i] = img
        vw.write(f)
    vw.release()
    return path




# ----------------------------------------------------------------------------- detection
def test_haar_cascade_finds_the_face_in_a_real_photo():
    from ferkit.predict import FaceDetector, read_gray

    gray = read_gray(face_photo())
    boxes = FaceDetector().detect(gray)
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    # the face (glasses/nose) is around (265, 230) in this 512x600 photo
    assert x < 265 < x + w and y < 230 < y + h and 150 < w < 300
    noise = (np.random.default_rng(0).random((480, 640)) * 255).astype(np.uint8)
    assert FaceDetector().detect(noise) == []
    # detection on a downscaled copy of a large image maps boxes back to full resolution
    import cv2
    big = cv2.resize(gray, (1024, 1200))
    (bx, by, bw, bh), = FaceDetector(max_side=640).detect(big)
    assert abs(bx - 2 * x) < 40 and abs(bw - 2 * w) < 40


def test_an_opencv_without_haar_is_one_line_and_no_detect_still_works(trained, tmp_path, capfd, monkeypatch):
    import cv2

    from ferkit.predict import detect

    class NoHaar:   # OpenCV 5: everything else there, no CascadeClassifier
        __version__ = "5.0.0"

        def __getattr__(self, name):
            if name == "CascadeClassifier":
                raise AttributeError(name)
            return getattr(cv2, name)
    monkeypatch.setattr(detect, "_cv2", NoHaar)
    face = [str(next((trained / "test" / "sad").glob("*.jpg")))]
    capfd.readouterr()
    assert run(["predict", str(trained / "run"), *face, "--detector", "haar", "--no-progress",
                "--out", str(tmp_path / "a")]) == 1
    assert "opencv-python-headless<5" in one_line_error(capfd)
    assert not (tmp_path / "a" / "predictions.csv").exists()
    assert run(["predict", str(trained / "run"), *face, "--no-detect", "--no-progress",
                "--out", str(tmp_path / "b")]) == 0
    assert len(read_rows(tmp_path / "b" / "predictions.csv")) == 1


def test_a_recognizer_without_detection_makes_its_detector_on_first_use(trained):
    from ferkit import Recognizer

    rec = Recognizer.load(str(trained / "run"), detect=False, max_side=320)
    assert rec.detector is None
    assert rec.detect(np.zeros((64, 64), np.uint8)) == []
    assert rec.detector.max_side == 320     # with the arguments it was loaded with


def test_crop_is_a_square_with_margin_and_replicated_edges():
    from ferkit.predict import crop_face

    img = np.arange(100 * 120, dtype=np.uint32).reshape(100, 120).astype(np.uint8)
    c = crop_face(img, (40, 30, 20, 20), margin=0.1)
    assert c.shape == (24, 24)
    assert np.array_equal(c, img[28:52, 38:62])
    edge = crop_face(img, (0, 0, 30, 40), margin=0.25)   # leaves the image at the top-left
    assert edge.shape == (60, 60)
    assert np.array_equal(edge[:, 0], edge[:, 1]) and np.array_equal(edge[0], edge[1])


# ----------------------------------------------------------------------------- identity with training
def test_no_detect_gives_exactly_evaluates_probabilities(trained, tmp_path, capsys):
    assert run(["evaluate", str(trained / "run"), "--test-dir", str(trained / "test"),
                "--out", str(tmp_path / "ev"), "--precision", "fp32", "--device", "cpu"]) == 0
    assert run(["predict", str(trained / "run"), str(trained / "test"), "--no-detect", "--out",
                str(tmp_path / "pr"), "--no-progress", "--batch-size", "7", "--device", "cpu"]) == 0
    ev = {Path(r["file"]).resolve(): r for r in read_rows(tmp_path / "ev" / "predictions.csv")}
    pr = read_rows(tmp_path / "pr" / "predictions.csv")
    assert len(pr) == len(ev) == 18
    for row in pr:
        e = ev[Path(row["source"]).resolve()]
        assert row["label"] == e["predicted"]
        for c in CLASSES:
            assert float(row[f"p_{c}"]) == pytest.approx(float(e[f"p_{c}"]), abs=2e-6)
        assert (row["frame"], row["time_s"], row["x"], row["y"], row["w"], row["h"]) == ("", "", "0", "0", "40", "40")


def test_python_api_accepts_paths_arrays_and_pil_images(trained):
    import cv2
    from PIL import Image

    from ferkit import Recognizer
    from ferkit.predict import FacePrediction

    r = Recognizer.load(trained / "run")
    assert r.classes == CLASSES and r.image_size == 32
    path = next((trained / "test" / "happy").glob("*.jpg"))
    by_path = r.predict(path, detect=False)
    by_gray = r.predict(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), detect=False)
    by_pil = r.predict(Image.open(path), detect=False)
    by_bgr = r.predict(cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR), detect=False)
    for other in (by_gray, by_pil, by_bgr):
        assert other[0].probabilities == pytest.approx(by_path[0].probabilities, abs=1e-6)
    f = by_path[0]
    assert isinstance(f, FacePrediction) and f.box == (0, 0, 40, 40) and f.label in CLASSES
    assert sum(f.probabilities.values()) == pytest.approx(1, abs=1e-5) and f.confidence == max(f.probabilities.values())
    faces = r.predict(face_photo())
    assert len(faces) == 1 and faces[0].box[2] > 100
    assert r.predict(np.full((200, 200), 128, np.uint8)) == []
    files = sorted((trained / "test" / "sad").glob("*"))
    batch = r.predict_faces([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in files])
    assert len(batch) == 6
    assert batch[0].probabilities == pytest.approx(
        r.predict(sorted((trained / "test" / "sad").glob("*"))[0], detect=False)[0].probabilities, abs=1e-6)


# ----------------------------------------------------------------------------- outputs
def test_csv_json_schema_summary_and_annotated_images(trained, tmp_path, capsys):
    import cv2

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "sub").mkdir()
    (photos / "sub" / "hopper.jpg").write_bytes(face_photo().read_bytes())
    cv2.imwrite(str(photos / "blank.png"), np.full((240, 320), 200, np.uint8))
    assert run(["predict", str(trained / "run"), str(photos), "--out", str(tmp_path / "c"), "--annotate",
                "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "1 face(s)" in out and "1 image(s) with no face" in out
    rows = read_rows(tmp_path / "c" / "predictions.csv")
    assert list(rows[0]) == ["source", "frame", "time_s", "track", "x", "y", "w", "h", "label", "confidence",
                             "p_angry", "p_happy", "p_sad", "detector_score", "yaw", "pitch", "roll"]
    assert len(rows) == 1 and rows[0]["source"].endswith("hopper.jpg") and rows[0]["frame"] == rows[0]["track"] == ""
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["faces"] == 1 and summary["images"] == 2 and summary["no_face"][0].endswith("blank.png")
    for name, shape in (("hopper.jpg", (600, 512, 3)), ("blank.png", (240, 320, 3))):
        img = cv2.imread(str(tmp_path / "c" / "annotated" / name))
        assert img is not None and img.shape == shape

    assert run(["predict", str(trained / "run"), str(photos), "--out", str(tmp_path / "j"), "--format", "json",
                "--no-progress"]) == 0
    data = json.loads((tmp_path / "j" / "predictions.json").read_text())
    assert isinstance(data, list) and len(data) == 1
    assert set(data[0]) == {"source", "frame", "time_s", "track", "box", "label", "confidence", "probabilities",
                            "detector_score", "keypoints", "yaw", "pitch", "roll", "landmarks"}
    assert data[0]["frame"] is None and len(data[0]["box"]) == 4 and list(data[0]["probabilities"]) == list(CLASSES)
    assert [p.name for p in (tmp_path / "j").glob(".*")] == []  # the partial JSON-lines file and the lock are gone
    capsys.readouterr()

    assert run(["predict", str(trained / "run"), str(photos), "--out", "-", "--format", "json", "--no-progress"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1


# ----------------------------------------------------------------------------- video
def test_video_frames_times_every_and_annotated_video(trained, tmp_path, capsys):
    import cv2

    video = _video(tmp_path / "clip.avi", frames=12, fps=10.0)
    assert run(["predict", str(trained / "run"), str(video), "--out", str(tmp_path / "v"), "--every", "4",
                "--annotate", "--no-progress"]) == 0
    rows = read_rows(tmp_path / "v" / "predictions.csv")
    assert [int(r["frame"]) for r in rows] == [0, 4, 8]
    assert [float(r["time_s"]) for r in rows] == pytest.approx([0.0, 0.4, 0.8])
    xs = [int(r["x"]) for r in rows]
    assert xs[0] < xs[1] < xs[2]  # the face moves right by 8 px per frame
    cap = cv2.VideoCapture(str(tmp_path / "v" / "annotated" / "clip.mp4"))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    ok, frame = cap.read()
    assert ok and frame.shape == (360, 480, 3)
    cap.release()
    from ferkit.predict.video_writer import h264_encoder
    assert _video_codec(tmp_path / "v" / "annotated" / "clip.mp4") == ("h264" if h264_encoder() else "mpeg4")
    # --no-detect: every processed frame is one face
    assert run(["predict", str(trained / "run"), str(video), "--out", str(tmp_path / "n"), "--every", "5",
                "--no-detect", "--no-progress"]) == 0
    rows = read_rows(tmp_path / "n" / "predictions.csv")
    assert [(r["frame"], r["w"], r["h"]) for r in rows] == [("0", "480", "360"), ("5", "480", "360"),
                                                            ("10", "480", "360")]


def _video_codec(path: Path) -> str:
    """The codec of a video file's first video stream as ffmpeg names it (h264, mpeg4 ...), read by
    imageio-ffmpeg's ffmpeg binary (the video extra; part of the test extra)."""
    import re
    import subprocess

    ffmpeg = pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()
    err = subprocess.run([ffmpeg, "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    found = re.search(r"Stream #\S+.*?: Video: (\w+)", err)
    assert found, err
    return found.group(1)


def test_annotated_video_is_h264_with_the_extra_and_mp4v_without(tmp_path, monkeypatch):
    """Browsers play H.264 MP4, not OpenCV's MPEG-4 Part 2; without imageio-ffmpeg (or when its
    encoder cannot start) the cv2 writer is the fallback."""
    import cv2

    from ferkit.predict import video_writer

    frames = [np.full((61, 81, 3), 20 * i, np.uint8) for i in range(6)]   # odd sizes: padded to even for H.264

    def write(path: Path):
        w = video_writer.open_video_writer(path, 10.0, (81, 61))
        for f in frames:
            w.write(f)
        w.release()
        cap = cv2.VideoCapture(str(path))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        return _video_codec(path), n
    pytest.importorskip("imageio_ffmpeg")
    assert write(tmp_path / "a.mp4") == ("h264", 6)
    monkeypatch.setattr(video_writer, "h264_encoder", lambda: None)
    assert write(tmp_path / "b.mp4") == ("mpeg4", 6)


# ----------------------------------------------------------------------------- bad input
def test_bad_files_are_skipped_and_listed(trained, tmp_path, capfd):
    good = next((trained / "test" / "angry").glob("*.jpg"))
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "broken.mp4").write_text("not a video")
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(face_photo().read_bytes()[:3000])
    code = run(["predict", str(trained / "run"), str(good), str(tmp_path / "notes.png"), str(tmp_path / "broken.mp4"),
                str(truncated), str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 0
    cap = capfd.readouterr()
    assert "Traceback" not in cap.err
    for name in ("notes.png", "broken.mp4", "trunc.jpg", "missing.jpg"):
        assert f"skipped {tmp_path / name}" in cap.out
    assert len(json.loads((tmp_path / "o" / "summary.json").read_text())["bad"]) == 4


@pytest.mark.parametrize("case", ["only_bad", "missing_model", "camera", "out_is_file", "onnx_with_torch",
                                  "no_inputs", "empty_folder"])
def test_unusable_runs_fail_with_one_line(trained, tmp_path, capfd, case):
    model, inputs, extra = str(trained / "run"), [str(next((trained / "test" / "sad").glob("*.jpg")))], []
    if case == "only_bad":
        (tmp_path / "x.jpg").write_text("nope")
        inputs = [str(tmp_path / "x.jpg")]
    elif case == "missing_model":
        model = str(tmp_path / "nothing")
    elif case == "camera":
        extra = ["--camera", "97"]
    elif case == "out_is_file":
        (tmp_path / "file").write_text("x")
        extra = ["--out", str(tmp_path / "file" / "sub")]
    elif case == "onnx_with_torch":
        (tmp_path / "m.onnx").write_text("x")
        model = str(tmp_path / "m.onnx")
    elif case == "no_inputs":
        inputs = []
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        inputs = [str(tmp_path / "empty")]
    if "--out" not in extra:
        extra += ["--out", str(tmp_path / "out")]
    capfd.readouterr()
    assert run(["predict", model, *inputs, "--no-progress", *extra]) == 1
    one_line_error(capfd)


def test_recognizer_errors_are_ferkit_errors(trained, tmp_path):
    from ferkit import FerkitError, Recognizer

    r = Recognizer.load(trained / "run")
    with pytest.raises(FerkitError):
        r.predict(tmp_path / "absent.png")
    with pytest.raises(FerkitError):
        r.predict(np.zeros((5, 5, 7), np.uint8))
    with pytest.raises(FerkitError):
        Recognizer.load(trained / "run", backend="tflite")
