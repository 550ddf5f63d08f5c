"""Video tracks, smoothing, per-video summaries, eye alignment, detection retries and evaluate --detect."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import face_photo, one_line_error, read_rows

from ferkit.cli import run

CLASSES = ("angry", "happy", "sad")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny classifier with random weights: these tests check plumbing, not accuracy."""
    import torch

    from ferkit.models import CheckpointRecord, InputSpec, create_model, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_checkpoint(create_model("tiny", len(CLASSES), 32), path, CheckpointRecord("tiny", CLASSES, InputSpec(32)))
    return path


def _face(size: int = 150) -> np.ndarray:
    """Grace Hopper's head (matplotlib's sample photo), BGR, ``size`` px wide."""
    import cv2

    img = cv2.imread(str(face_photo()))[40:420, 90:450]
    return cv2.resize(img, (size, round(size * img.shape[0] / img.shape[1])))


def _paste(canvas: np.ndarray, face: np.ndarray, x: int, y: int) -> np.ndarray:
    canvas[y:y + face.shape[0], x:x + face.shape[1]] = face
    return canvas


def _video(path: Path, frames, fps: float = 10.0) -> Path:
    import cv2

    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert vw.isOpened()
    for f in frames:
        vw.write(f)
    vw.release()
    return path




# ----------------------------------------------------------------------------- tracker and smoothing
def test_tracker_keeps_ids_for_moving_boxes_and_gives_new_ids():
    from ferkit.predict.track import IouTracker

    t = IouTracker(min_iou=0.3, max_gap_s=1.0)
    assert t.update([(100, 100, 50, 50)], 0.0) == [1]
    # the face moves a little, a second face appears: it gets a new id; order in the frame does not matter
    assert t.update([(300, 90, 60, 60), (106, 102, 50, 50)], 0.1) == [2, 1]
    assert t.update([(112, 104, 50, 50), (303, 92, 60, 60)], 0.2) == [1, 2]
    # face 1 leaves; face 2 stays. Face 1 coming back within max_gap_s keeps its id ...
    assert t.update([(305, 92, 60, 60)], 0.5) == [2]
    assert t.update([(113, 104, 50, 50), (306, 92, 60, 60)], 1.1) == [1, 2]
    # ... but not after a longer absence, nor when it reappears elsewhere
    assert t.update([(306, 93, 60, 60)], 2.0) == [2]
    assert t.update([(113, 104, 50, 50), (306, 93, 60, 60)], 3.0) == [3, 2]
    assert t.update([(500, 300, 50, 50)], 3.1) == [4]


def test_smoothing_reduces_label_flicker_on_a_synthetic_sequence():
    from ferkit import FerkitError
    from ferkit.predict.track import Smoother

    rng = np.random.default_rng(0)
    truth = np.array([0.45, 0.40, 0.15])          # a steady face, two close expressions
    frames = [np.clip(truth + rng.normal(0, 0.08, 3), 1e-3, None) for _ in range(250)]
    frames = [p / p.sum() for p in frames]

    def changes(seconds: float) -> int:
        s = Smoother(seconds)
        labels = [int(np.argmax(s.update(1, p, i / 25))) for i, p in enumerate(frames)]
        return sum(a != b for a, b in zip(labels, labels[1:]))

    raw, smooth = changes(0.0), changes(0.5)
    assert raw >= 30 and smooth * 5 <= raw, (raw, smooth)
    # the weight of a frame depends on the time since the last one, not on the frame rate
    s = Smoother(1.0)
    s.update(1, np.array([1.0, 0.0]), 0.0)
    assert s.update(1, np.array([0.0, 1.0]), 1.0)[1] == pytest.approx(1 - math.exp(-1))
    with pytest.raises(FerkitError):
        Smoother(-1)


def test_video_rows_tracks_empty_frames_summary_and_timeline(model, tmp_path):
    face = _face(150)
    frames = []
    for i in range(16):
        f = np.full((300, 400, 3), 90, np.uint8)
        if not 6 <= i < 9:                        # three frames without a face
            _paste(f, face, 10 + 6 * i, 60)
        frames.append(f)
    video = _video(tmp_path / "clip.avi", frames)
    assert run(["predict", str(model), str(video), "--out", str(tmp_path / "o"), "--no-progress", "--annotate"]) == 0
    rows = read_rows(tmp_path / "o" / "predictions.csv")
    assert [int(r["frame"]) for r in rows] == list(range(16))
    empty = [r for r in rows if r["label"] == ""]
    assert [int(r["frame"]) for r in empty] == [6, 7, 8] and all(r["track"] == r["x"] == "" for r in empty)
    assert {r["track"] for r in rows if r["label"]} == {"1"}   # one face, one track, across the gap
    summary = json.loads((tmp_path / "o" / "videos" / "clip" / "summary.json").read_text())
    assert summary["frames"] == 16 and summary["frames_with_faces"] == 13 and summary["smooth_s"] == 0.5
    (track,) = summary["tracks"]
    assert (track["track"], track["first_s"], track["last_s"], track["frames"]) == (1, 0.0, 1.5, 13)
    assert sum(track["share"].values()) == pytest.approx(1, abs=1e-3) and track["dominant"] in CLASSES
    assert track["share"][track["dominant"]] == max(track["share"].values())
    assert (tmp_path / "o" / "videos" / "clip" / "timeline.png").stat().st_size > 1000
    import cv2

    cap = cv2.VideoCapture(str(tmp_path / "o" / "annotated" / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 16
    cap.release()

    # the Python API yields the same stream
    from ferkit import Recognizer

    stream = list(Recognizer.load(model).track(video))
    assert [f.frame for f in stream] == list(range(16)) and [len(f.faces) for f in stream][5:10] == [1, 0, 0, 0, 1]
    first = rows[0]
    assert stream[0].faces[0].track == 1 and stream[0].faces[0].label == first["label"]
    assert stream[0].faces[0].probabilities["happy"] == pytest.approx(float(first["p_happy"]), abs=1e-5)
    # --smooth 0: the rows are the frames' own probabilities
    assert run(["predict", str(model), str(video), "--out", str(tmp_path / "raw"), "--no-progress",
                "--smooth", "0"]) == 0
    raw = read_rows(tmp_path / "raw" / "predictions.csv")
    assert float(raw[5]["p_happy"]) == pytest.approx(stream[5].faces[0].raw["happy"], abs=1e-5)
    assert json.loads((tmp_path / "raw" / "videos" / "clip" / "summary.json").read_text())["smooth_s"] == 0


def test_two_faces_two_tracks_and_largest(model, tmp_path):
    import cv2

    frames = [_paste(_paste(np.full((320, 520, 3), 90, np.uint8), _face(200), 10 + 3 * i, 20), _face(140),
                     330, 60) for i in range(6)]
    video = _video(tmp_path / "two.avi", frames)
    assert run(["predict", str(model), str(video), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    rows = read_rows(tmp_path / "o" / "predictions.csv")
    assert len(rows) == 12 and {r["track"] for r in rows} == {"1", "2"}
    by_track = {t: {int(r["x"]) < 300 for r in rows if r["track"] == t} for t in ("1", "2")}
    assert by_track == {"1": {True}, "2": {False}}     # ids follow the faces, left face first
    summary = json.loads((tmp_path / "o" / "videos" / "two" / "summary.json").read_text())
    assert [t["frames"] for t in summary["tracks"]] == [6, 6]
    # --largest: one face per frame and per photo, the bigger one
    cv2.imwrite(str(tmp_path / "two.png"), frames[0])
    assert run(["predict", str(model), str(video), str(tmp_path / "two.png"), "--out", str(tmp_path / "l"),
                "--no-progress", "--largest"]) == 0
    rows = read_rows(tmp_path / "l" / "predictions.csv")
    assert len(rows) == 7 and all(int(r["x"]) < 300 for r in rows)


# ----------------------------------------------------------------------------- alignment
def test_rotation_math_levels_a_tilted_pair_of_points():
    import cv2

    from ferkit.predict.align import pick_eye_pair, rotate_points, rotated_crop

    img = np.zeros((200, 200), np.uint8)
    angle = 25.0                                   # the line goes down to the right by 25 degrees
    a, b = (70.0, 90.0), (70 + 60 * math.cos(math.radians(angle)), 90 + 60 * math.sin(math.radians(angle)))
    for x, y in (a, b):
        cv2.circle(img, (round(x), round(y)), 4, 255, -1)
    crop = rotated_crop(img, (100, 100), 160, angle)
    ys, xs = np.nonzero(crop > 128)
    left, right = ys[xs < 80].mean(), ys[xs >= 80].mean()
    assert abs(left - right) < 1.5                 # level after the turn
    # rotate_points undoes cv2's rotation
    m = cv2.getRotationMatrix2D((100, 100), 30, 1.0)
    turned = m @ np.array([140.0, 60.0, 1.0])
    assert rotate_points([turned], (100, 100), 30)[0] == pytest.approx([140, 60], abs=1e-6)
    # eye pairs: one each side, plausible distance and size; a lone or implausible find is no pair
    pair = pick_eye_pair([(20, 40, 24, 24), (90, 55, 24, 24), (60, 110, 30, 30)], 144, 25)
    assert pair == ((32.0, 52.0), (102.0, 67.0))
    assert pick_eye_pair([(20, 40, 24, 24)], 144, 25) is None
    assert pick_eye_pair([(20, 10, 24, 24), (90, 90, 24, 24)], 144, 25) is None   # 48 degrees: no


def test_aligner_turns_a_tilted_face_upright_and_falls_back(model):
    import cv2

    from ferkit.predict import FaceDetector, crop_face
    from ferkit.predict.align import EyeAligner

    gray = cv2.cvtColor(_face(260), cv2.COLOR_BGR2GRAY)
    canvas = np.full((480, 480), 90, np.uint8)
    canvas[80:80 + gray.shape[0], 110:370] = gray
    aligner, det = EyeAligner(), FaceDetector()
    (box,) = det.detect(canvas)
    upright_roll = aligner.roll(crop_face(canvas, box, 0.0))
    assert upright_roll is not None and abs(upright_roll) < 5
    m = cv2.getRotationMatrix2D((240, 240), 12, 1.0)     # the head now leans 12 degrees to the image's left
    tilted = cv2.warpAffine(canvas, m, (480, 480), borderMode=cv2.BORDER_REPLICATE)
    (box,) = det.detect(tilted)
    crop, roll = aligner.crop(tilted, box, 0.1)
    assert -20 < roll < -7, roll
    k = round(crop.shape[0] / 12)                   # the box inside the crop's margin: its eyes are now level-ish
    again = aligner.roll(crop[k:-k, k:-k])
    assert again is None or abs(again) < abs(roll) / 2 + 2
    # no eyes to find (a blank box): today's crop, not turned
    blank = np.full((300, 300), 128, np.uint8)
    crop, roll = aligner.crop(blank, (50, 50, 200, 200), 0.1)
    assert roll == 0 and np.array_equal(crop, crop_face(blank, (50, 50, 200, 200), 0.1))
    # the Recognizer turns the crop with align (the default), not with align=False
    from ferkit import Recognizer

    on, off = Recognizer.load(model), Recognizer.load(model, align=False)
    assert -20 < on.prepare(tilted).rolls[0] < -7 and off.prepare(tilted).rolls == [0.0]


# ----------------------------------------------------------------------------- detection retries
def test_tight_small_and_tilted_photos_are_found_by_the_retries(model):
    import cv2

    from ferkit.predict import FaceDetector
    from ferkit.predict.detect import find_faces

    gray = cv2.cvtColor(_face(300), cv2.COLOR_BGR2GRAY)
    tight = cv2.resize(gray[70:270, 40:260], (44, 40), interpolation=cv2.INTER_AREA)  # a 44 px face, no margin
    det = FaceDetector()
    assert det.detect(tight) == []
    ((x, y, w, h), angle), = find_faces(det, tight)
    assert angle == 0 and abs(x + w / 2 - 22) < 8 and abs(y + h / 2 - 20) < 8 and 25 < w < 70
    canvas = np.full((500, 500), 90, np.uint8)
    canvas[60:60 + gray.shape[0], 100:400] = gray
    # turned counter-clockwise on screen: the eyes' line rises to the right, a roll of -38 degrees
    tilted = cv2.warpAffine(canvas, cv2.getRotationMatrix2D((250, 250), 38, 1.0), (500, 500),
                            borderMode=cv2.BORDER_REPLICATE)
    assert det.detect(tilted) == [] and find_faces(det, tilted, retry=False) == []
    ((x, y, w, h), angle), = find_faces(det, tilted)
    assert angle in (-20.0, -40.0) and math.hypot(x + w / 2 - 250, y + h / 2 - 230) < 60
    assert find_faces(det, np.full((60, 60), 128, np.uint8)) == []


def test_only_the_retries_search_thoroughly():
    """A photo with a face found upright costs one ordinary search; the retries (nothing found) search
    their padded, turned copies at up to twice the resolution with one neighbour fewer."""
    from ferkit.predict import FaceDetector
    from ferkit.predict.detect import RETRY_ANGLES, find_faces

    class Recording(FaceDetector):
        def __init__(self, answer):
            super().__init__()
            self.answer, self.calls = answer, []

        def detect(self, gray, min_size=None, thorough=False):
            self.calls.append((gray.shape, thorough))
            return self.answer

    found = Recording([(10, 10, 40, 40)])
    assert find_faces(found, np.zeros((480, 640), np.uint8)) == [((10, 10, 40, 40), 0.0)]
    assert found.calls == [((480, 640), False)]
    empty = Recording([])
    assert find_faces(empty, np.zeros((480, 640), np.uint8)) == []
    assert [t for _, t in empty.calls] == [False] + [True] * (1 + len(RETRY_ANGLES))

    det, seen = FaceDetector(max_side=640), []
    det._cc = type("Cascade", (), {"detectMultiScale": lambda self, img, **kw: seen.append(
        (img.shape, kw["minNeighbors"])) or ()})()
    det.detect(np.zeros((864, 1024), np.uint8))
    det.detect(np.zeros((864, 1024), np.uint8), thorough=True)
    det.detect(np.zeros((1800, 2000), np.uint8), thorough=True)
    assert seen == [((540, 640), 5), ((864, 1024), 4), ((1152, 1280), 4)]


def test_fallback_whole_classifies_photos_without_a_face(model, tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "blank.png"), np.full((120, 160), 128, np.uint8))
    assert run(["predict", str(model), str(tmp_path / "blank.png"), "--out", str(tmp_path / "a"),
                "--no-progress"]) == 0
    assert read_rows(tmp_path / "a" / "predictions.csv") == []
    assert run(["predict", str(model), str(tmp_path / "blank.png"), "--out", str(tmp_path / "b"), "--no-progress",
                "--fallback", "whole"]) == 0
    (row,) = read_rows(tmp_path / "b" / "predictions.csv")
    assert (row["x"], row["y"], row["w"], row["h"]) == ("0", "0", "160", "120") and row["label"] in CLASSES
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["whole_image"] == summary["no_face"] == [str(tmp_path / "blank.png")]


# ----------------------------------------------------------------------------- evaluate --detect
def test_evaluate_detect_counts_photos_without_a_face_as_wrong(model, tmp_path, capsys):
    import cv2

    for c in CLASSES:
        (tmp_path / "photos" / c).mkdir(parents=True)
    photo = _paste(np.full((300, 300, 3), 90, np.uint8), _face(200), 50, 30)
    for c in ("angry", "happy"):
        cv2.imwrite(str(tmp_path / "photos" / c / "face.jpg"), photo)
    cv2.imwrite(str(tmp_path / "photos" / "sad" / "blank.png"), np.full((200, 200), 128, np.uint8))
    (tmp_path / "photos" / "sad" / "broken.png").write_text("not an image")
    assert run(["evaluate", str(model), "--test-dir", str(tmp_path / "photos"), "--detect", "--out",
                str(tmp_path / "ev"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    rows = {Path(r["file"]).parent.name: r for r in read_rows(tmp_path / "ev" / "predictions.csv")}
    assert metrics["n"] == 3 and metrics["no_face"] == [str(tmp_path / "photos" / "sad" / "blank.png")]
    assert metrics["detection_rate"] == pytest.approx(2 / 3) and len(metrics["skipped"]) == 1
    assert rows["sad"]["predicted"] == "" and rows["angry"]["predicted"] == rows["happy"]["predicted"] != ""
    right = sum(rows[c]["predicted"] == c for c in ("angry", "happy"))    # one of the two, whatever the model says
    assert right == 1 and metrics["accuracy"] == pytest.approx(1 / 3) and metrics["accuracy_on_detected"] == 0.5
    assert "accuracy: 0.3333" in out and "blank.png" in out
    for name in ("report.txt", "confusion_matrix.png"):
        assert (tmp_path / "ev" / name).is_file()


def test_evaluate_detect_keeps_fallback_guesses_out_of_the_detection_rate_and_says_why(model, tmp_path, capsys):
    """--fallback whole classifies a faceless photo whole: an answer, but not a face the detector
    found. A missed face says why (here: smaller than --min-face), and metrics.json records min_face."""
    import cv2

    for c in CLASSES:
        (tmp_path / "photos" / c).mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "photos" / "angry" / "face.jpg"),
                _paste(np.full((300, 300, 3), 90, np.uint8), _face(200), 50, 30))
    cv2.imwrite(str(tmp_path / "photos" / "happy" / "small.jpg"),       # a 120 px face in 600 px: below 0.3
                _paste(np.full((600, 600, 3), 90, np.uint8), _face(120), 240, 200))
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "photos" / "sad" / "noise.png"), (rng.random((200, 200)) * 255).astype(np.uint8))
    assert run(["evaluate", str(model), "--test-dir", str(tmp_path / "photos"), "--detect", "--fallback", "whole",
                "--min-face", "0.3", "--out", str(tmp_path / "ev"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    rows = {Path(r["file"]).name: r for r in read_rows(tmp_path / "ev" / "predictions.csv")}
    assert [rows[n]["face"] for n in ("face.jpg", "small.jpg", "noise.png")] == ["detected", "whole", "whole"]
    assert metrics["detection_rate"] == pytest.approx(1 / 3) and metrics["fallback_count"] == 2
    assert metrics["pipeline"]["min_face"] == 0.3 and metrics["pipeline"]["fallback"] == "whole"
    assert "below --min-face 0.3" in rows["small.jpg"]["reason"] and rows["face.jpg"]["reason"] == ""
    assert rows["noise.png"]["reason"].startswith("no face found")
    assert metrics["no_face_reasons"][str(tmp_path / "photos" / "happy" / "small.jpg")] == rows["small.jpg"]["reason"]
    assert sum(map(sum, metrics["confusion_matrix_detected"])) == 1     # the detected face only
    assert "classified whole (--fallback whole, no face found): 2" in out


# ----------------------------------------------------------------------------- bad input
def test_a_video_whose_frames_change_size_is_one_clear_line(model, tmp_path, capfd, monkeypatch):
    import cv2

    from ferkit import FerkitError, Recognizer
    from ferkit.predict import detect

    big, small = np.full((240, 320, 3), 90, np.uint8), np.full((120, 160, 3), 90, np.uint8)
    with pytest.raises(FerkitError, match="frame 2 is 160x120 but the frames before it are 320x240"):
        list(Recognizer.load(model).track([big, big, small]))

    class Capture:      # a video file whose third frame is smaller, as some streams are
        def __init__(self, *args):
            self.frames = [big, big, small, small]

        def isOpened(self):
            return True

        def read(self):
            return (True, self.frames.pop(0)) if self.frames else (False, None)

        def get(self, prop):
            return 10.0 if prop == cv2.CAP_PROP_FPS else 4 if prop == cv2.CAP_PROP_FRAME_COUNT else 0.0

        def release(self):
            pass

    class FakeCv2:
        def __getattr__(self, name):
            return Capture if name == "VideoCapture" else getattr(cv2, name)

    monkeypatch.setattr(detect, "_cv2", FakeCv2)
    (tmp_path / "clip.avi").write_bytes(b"x")
    capfd.readouterr()
    assert run(["predict", str(model), str(tmp_path / "clip.avi"), "--out", str(tmp_path / "o"),
                "--no-progress"]) == 1
    assert "frame 2 is 160x120" in one_line_error(capfd)
    cv2.imwrite(str(tmp_path / "ok.png"), np.full((100, 100), 128, np.uint8))
    assert run(["predict", str(model), str(tmp_path / "clip.avi"), str(tmp_path / "ok.png"), "--out",
                str(tmp_path / "p"), "--no-progress"]) == 0
    out = capfd.readouterr().out
    assert f"skipped {tmp_path / 'clip.avi'}: frame 2 is 160x120" in out
    assert [r["frame"] for r in read_rows(tmp_path / "p" / "predictions.csv")] == ["0", "1"]   # the frames before it
    assert not (tmp_path / "p" / "videos").exists()


@pytest.mark.parametrize("case", ["smooth", "fallback", "detector_missing", "video_missing", "not_a_video"])
def test_bad_options_and_videos_fail_with_one_line(model, tmp_path, capfd, monkeypatch, case):
    import sys

    from ferkit import FerkitError, Recognizer

    if case == "video_missing":
        with pytest.raises(FerkitError, match="does not exist"):
            next(Recognizer.load(model).track(tmp_path / "nothing.mp4"))
        return
    if case == "not_a_video":
        (tmp_path / "x.mp4").write_text("not a video")
        with pytest.raises(FerkitError, match="cannot open video"):
            next(Recognizer.load(model).track(tmp_path / "x.mp4"))
        return
    photo = tmp_path / "p.png"
    photo.write_bytes(face_photo().read_bytes())
    args = {"smooth": ["--smooth", "-1"], "fallback": ["--fallback", "everything"],
            "detector_missing": ["--detector", "dlib"]}[case]
    if case == "detector_missing":
        monkeypatch.setitem(sys.modules, "dlib", None)     # as if dlib were not installed
    capfd.readouterr()
    command = ["predict", str(model), str(photo), "--out", str(tmp_path / "o"), "--no-progress", *args]
    if case == "detector_missing":
        assert run(command) == 1
    else:
        with pytest.raises(SystemExit) as exit_info:      # argparse refuses the value: usage error, status 2
            run(command)
        assert exit_info.value.code == 2
    err = one_line_error(capfd)
    assert ("pip install 'ferkit[dlib]'" in err) if case == "detector_missing" else "--" in err
    with pytest.raises(FerkitError):
        Recognizer.load(model, fallback="everything")


def test_dlib_detector_finds_the_face_in_haar_framing():
    pytest.importorskip("dlib")
    import cv2

    from ferkit import FerkitError
    from ferkit.predict.detect import create_detector

    gray = cv2.imread(str(face_photo()), cv2.IMREAD_GRAYSCALE)
    (hx, hy, hw, hh), = create_detector("haar").detect(gray)
    (dx, dy, dw, dh), = create_detector("dlib").detect(gray)
    assert abs((dx + dw / 2) - (hx + hw / 2)) < 0.15 * hw and abs((dy + dh / 2) - (hy + hh / 2)) < 0.15 * hw
    assert 0.75 < dw / hw < 1.33
    assert create_detector("dlib").detect(np.full((300, 300), 128, np.uint8)) == []
    with pytest.raises(FerkitError, match="does not take"):
        create_detector("dlib", scale_factor=1.2)
