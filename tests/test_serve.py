"""`ferkit serve`: the HTTP API, WebSocket, limits and CLI failures, through FastAPI's TestClient.

Every status code the server answers is provoked here: 200, 400, 401, 404, 413, 415, 503, 504, and
the WebSocket's answers and closes. Images are made by the tests (a real face photo that ships with
matplotlib, shrunk; noise; a PNG header that claims 40000x40000 pixels).
"""
from __future__ import annotations

import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest

fastapi = pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'ferkit[serve]'")
from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from ferkit.bundled import DEFAULT_MODEL  # noqa: E402
from ferkit.errors import FerkitError  # noqa: E402
from ferkit.serve import MicroBatcher, QueueFull, ServeConfig, create_app  # noqa: E402


def _jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def face_jpeg() -> bytes:
    """A small photo with one face: matplotlib's Grace Hopper, 256 px wide, on a wider canvas."""
    import cv2

    from ferkit.bundled import sample_photo

    img = cv2.imread(str(sample_photo()))
    img = cv2.resize(img, (256, 300), interpolation=cv2.INTER_AREA)
    canvas = np.full((300, 360, 3), 120, np.uint8)
    canvas[:, 52:308] = img
    return _jpeg(canvas)


@pytest.fixture(scope="module")
def recognizer():
    from ferkit import Recognizer

    return Recognizer.load()


@pytest.fixture
def make_client(recognizer):
    """make_client(**ServeConfig fields) -> a started TestClient; all are closed after the test."""
    clients = []

    def make(**options):
        options.setdefault("timeout_s", 120.0)        # a busy CI machine is slow, not broken
        client = TestClient(create_app(recognizer, **options))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def _bomb_png(width: int = 40000, height: int = 40000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's first bytes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    start = data.index(b"IHDR")
    ihdr = bytearray(data[start:start + 17])
    ihdr[4:12] = struct.pack(">II", width, height)
    data[start:start + 17] = ihdr
    data[start + 17:start + 21] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def _block(app):
    """Make the model wait for an Event; returns (entered, release)."""
    batcher = app.state.service.batcher
    inner, entered, release = batcher.classify, threading.Event(), threading.Event()

    def classify(faces, tta):
        entered.set()
        release.wait(60)
        return inner(faces, tta)

    batcher.classify = classify
    return entered, release


def _wait(cond, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


# ----------------------------------------------------------------------------- 200
def test_predict_multipart_and_raw_body_agree(make_client, face_jpeg, recognizer):
    c = make_client()
    r = c.post("/v1/predict", files={"file": ("face.jpg", face_jpeg, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == DEFAULT_MODEL and (body["width"], body["height"]) == (360, 300)
    assert len(body["faces"]) == 1
    face = body["faces"][0]
    x, y, w, h = face["box"]
    assert 52 <= x and x + w <= 308 and w > 60 and h > 60           # on the face, not the grey margins
    assert face["label"] in recognizer.classes
    assert set(face["probabilities"]) == set(recognizer.classes)
    assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert face["confidence"] == pytest.approx(max(face["probabilities"].values()))
    # the same image as the raw body, and the Python API: the same numbers
    raw = c.post("/v1/predict", content=face_jpeg, headers={"Content-Type": "image/jpeg"}).json()
    assert raw["faces"] == body["faces"]
    from ferkit.data import decode_image

    direct = recognizer.predict(decode_image(face_jpeg))
    assert direct[0].label == face["label"]
    assert direct[0].confidence == pytest.approx(face["confidence"], abs=1e-4)


def test_predict_options_detect_tta_min_face(make_client, face_jpeg, recognizer):
    c = make_client()
    whole = c.post("/v1/predict?detect=false", content=face_jpeg).json()
    assert [f["box"] for f in whole["faces"]] == [[0, 0, 360, 300]]
    assert c.post("/v1/predict?min_face=0.9", content=face_jpeg).json()["faces"] == []   # face is ~0.6 of the side
    # tta=flip is the mean of the face's and its mirror's probabilities
    plain = c.post("/v1/predict", content=face_jpeg).json()["faces"][0]
    flip = c.post("/v1/predict?tta=flip", content=face_jpeg).json()
    assert flip["tta"] == "flip"
    from ferkit.data import decode_image

    faces = recognizer.prepare(decode_image(face_jpeg)).faces
    want = recognizer.probabilities(np.concatenate([faces, faces[:, :, ::-1]])).mean(0)
    got = np.array([flip["faces"][0]["probabilities"][k] for k in recognizer.classes])
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert not np.allclose(got, [plain["probabilities"][k] for k in recognizer.classes], atol=1e-5)


def test_no_face_answers_empty_or_the_whole_image(make_client, recognizer):
    from ferkit import Recognizer

    noise = _jpeg((np.random.default_rng(1).random((64, 80)) * 255).astype(np.uint8))
    body = make_client().post("/v1/predict", content=noise).json()
    assert body["faces"] == [] and body["whole_image"] is False
    whole = TestClient(create_app(Recognizer(recognizer.backend, fallback="whole")))
    with whole:
        body = whole.post("/v1/predict", content=noise).json()
    assert body["whole_image"] is True and [f["box"] for f in body["faces"]] == [[0, 0, 80, 64]]


def test_models_healthz_openapi_docs_and_page(make_client, recognizer):
    c = make_client()
    m = c.get("/v1/models").json()["models"][0]
    assert m["name"] == DEFAULT_MODEL and m["image_size"] == recognizer.image_size
    assert m["classes"] == list(recognizer.classes)
    assert c.get("/healthz").json()["status"] == "ok"
    spec = c.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/models", "/healthz"} <= set(spec["paths"])
    # no endpoint takes a path or URL from the client: the parameters are options and a job's id and file name
    params = {p["name"] for op in spec["paths"].values() for o in op.values() for p in o.get("parameters", [])}
    assert params == {"tta", "detect", "min_face", "smooth", "every", "job_id", "name"}
    page = c.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    docs = c.get("/docs")
    assert docs.status_code == 200 and "/static/docs.js" in docs.text
    for path in ("/", "/docs", "/static/app.js", "/static/docs.js", "/static/style.css"):   # no CDN, works offline
        text = c.get(path).text
        assert "https://" not in text and "http://" not in text, path


# ----------------------------------------------------------------------------- 4xx
def test_bad_uploads_get_json_errors(make_client, face_jpeg):
    c = make_client()
    cases = [
        (dict(content=b"hello", headers={"Content-Type": "text/plain"}), 415, "Content-Type"),
        (dict(content=b"/etc/passwd"), 415, "not an image"),                     # a path is just bytes
        (dict(content=(np.random.default_rng(0).integers(0, 255, 4096, dtype=np.uint8)).tobytes(),
              headers={"Content-Type": "image/jpeg"}), 415, "not an image"),
        (dict(content=face_jpeg[: len(face_jpeg) // 2]), 400, "cannot decode"),  # truncated
        (dict(content=b""), 400, "empty"),
        (dict(content=_bomb_png()), 413, "too large"),                          # refused before decoding
        (dict(files=[("a", ("a.jpg", face_jpeg)), ("b", ("b.jpg", face_jpeg))]), 400, "no image"),  # which?
        (dict(files={"file": (None, "not a file")}), 400, "no image"),             # a text field
        (dict(data={"file": "x"}), 415, "Content-Type"),                          # url-encoded form
    ]
    for kwargs, status, words in cases:
        r = c.post("/v1/predict", **kwargs)
        assert r.status_code == status, (kwargs.get("headers"), r.text)
        body = r.json()
        assert body["status"] == status and isinstance(body["error"], str)
        if words:
            assert words in body["error"]
    for query in ("tta=sharpen", "min_face=2", "detect=maybe"):
        r = c.post(f"/v1/predict?{query}", content=face_jpeg)
        assert r.status_code == 400 and r.json()["error"], query
    assert c.get("/v1/nothing").json() == {"error": "Not Found", "status": 404}


def test_form_with_one_other_file_field_is_used(make_client, face_jpeg):
    r = make_client().post("/v1/predict", files={"image": ("f.jpg", face_jpeg, "image/jpeg")})
    assert r.status_code == 200 and len(r.json()["faces"]) == 1


def test_size_limit_413(make_client, face_jpeg):
    c = make_client(max_mb=0.01)        # 10 KB; the photo is larger
    assert len(face_jpeg) > 0.01 * 1024 * 1024
    for kwargs in (dict(content=face_jpeg), dict(files={"file": ("f.jpg", face_jpeg, "image/jpeg")})):
        r = c.post("/v1/predict", **kwargs)
        assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks():                        # no Content-Length: counted while read
        for i in range(0, len(face_jpeg), 1000):
            yield face_jpeg[i:i + 1000]

    r = c.post("/v1/predict", content=chunks(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413


def test_token_401(make_client, face_jpeg):
    c = make_client(token="s3cret")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        r = c.post("/v1/predict", content=face_jpeg, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/models", headers=headers).status_code == 401
    ok = {"Authorization": "Bearer s3cret"}
    assert c.post("/v1/predict", content=face_jpeg, headers=ok).status_code == 200
    assert c.get("/v1/models", headers=ok).status_code == 200
    assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200   # open: no data behind them
    # WebSocket: frames before the token are refused and the socket closed; the token message opens it
    with c.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(face_jpeg)
        assert ws.receive_json()["status"] == 401
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1008
    with c.websocket_connect("/v1/stream") as ws:
        ws.send_text('{"token": "s3cret"}')
        assert ws.receive_json()["authorised"] is True
        ws.send_bytes(face_jpeg)
        assert ws.receive_json()["type"] == "faces"
    with c.websocket_connect("/v1/stream", headers=ok) as ws:
        ws.send_bytes(face_jpeg)
        assert ws.receive_json()["type"] == "faces"


def test_cors_off_unless_asked(make_client):
    pre = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    r = make_client().options("/v1/predict", headers=pre)
    assert "access-control-allow-origin" not in r.headers
    c = make_client(cors=("http://localhost:3000",))
    r = c.options("/v1/predict", headers={**pre, "Origin": "http://localhost:3000"})
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
    r = c.options("/v1/predict", headers=pre)
    assert r.headers.get("access-control-allow-origin") != "http://evil.example"


def test_config_refuses_bad_values():
    for bad in (dict(max_mb=0), dict(min_face=1.5), dict(tta="x"), dict(token=" "), dict(max_queue=0),
                dict(cors=("*",), token="t")):
        with pytest.raises(FerkitError):
            ServeConfig(**bad)


# ----------------------------------------------------------------------------- 503, 504, batching
def test_full_queue_503_with_retry_after_then_recovers(make_client, face_jpeg):
    c = make_client(max_queue=1)
    entered, release = _block(c.app)
    first = {}
    t = threading.Thread(target=lambda: first.update(r=c.post("/v1/predict", content=face_jpeg)))
    t.start()
    try:
        assert entered.wait(60)
        r = c.post("/v1/predict", content=face_jpeg)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["error"]
    finally:
        release.set()
        t.join(20)
    assert first["r"].status_code == 200
    assert c.post("/v1/predict", content=face_jpeg).status_code == 200


def test_slow_request_504(make_client, face_jpeg):
    c = make_client(timeout_s=0.3)
    entered, release = _block(c.app)
    try:
        r = c.post("/v1/predict", content=face_jpeg)
        assert r.status_code == 504 and "timed out" in r.json()["error"]
    finally:
        release.set()
    _wait(lambda: c.app.state.service.in_flight == 0 and c.app.state.service.detecting == 0)
    c.app.state.service.config.timeout_s = 30        # the server goes on (with time for a loaded CI machine)
    assert c.post("/v1/predict", content=face_jpeg).status_code == 200


def test_concurrent_requests_share_one_model_call(make_client, face_jpeg):
    c = make_client(max_wait_ms=50)
    service = c.app.state.service
    entered, release = _block(c.app)
    results = []
    threads = [threading.Thread(target=lambda: results.append(c.post("/v1/predict", content=face_jpeg)))
               for _ in range(5)]
    threads[0].start()
    assert entered.wait(60)                       # the first request holds the model ...
    for t in threads[1:]:
        t.start()
    _wait(lambda: service.batcher.pending == 4)   # ... while four more queue up
    release.set()
    for t in threads:
        t.join(30)
    assert [r.status_code for r in results] == [200] * 5
    labels = {r.json()["faces"][0]["label"] for r in results}    # (a batch of 1 and of 4 may differ in the
    assert len(labels) == 1                                        # last digits: other kernels)
    assert (service.batcher.calls, service.batcher.faces, service.batcher.requests) == (2, 5, 5)


def test_batcher_groups_by_tta_and_reports_failures():
    calls = []

    def classify(faces, tta):
        calls.append((len(faces), tta))
        if tta == "crops":
            raise RuntimeError("boom")
        return np.tile(faces.reshape(len(faces), -1)[:, :1].astype(np.float32), (1, 3))

    b = MicroBatcher(classify, max_batch=64, max_wait_ms=200, max_pending=8)
    try:
        futures = [b.submit(np.full((n, 2, 2), n, np.uint8), tta) for n, tta in
                   ((1, "none"), (2, "flip"), (3, "none"), (1, "crops"))]
        np.testing.assert_array_equal(futures[2].result(10), np.full((3, 3), 3))
        assert futures[1].result(10).shape == (2, 3)
        with pytest.raises(RuntimeError, match="boom"):
            futures[3].result(10)
        assert sorted(calls) == [(1, "crops"), (2, "flip"), (4, "none")]   # none: 1 + 3 faces in one call
        assert b.submit(np.zeros((0, 2, 2), np.uint8)).result(1).shape[0] == 0
    finally:
        b.close()
    blocked = MicroBatcher(lambda f, t: time.sleep(2) or np.zeros((len(f), 3)), max_pending=1)
    try:
        blocked.submit(np.zeros((1, 2, 2), np.uint8))     # taken by the worker
        _wait(lambda: blocked.pending == 0)
        blocked.submit(np.zeros((1, 2, 2), np.uint8))     # waits
        with pytest.raises(QueueFull):
            blocked.submit(np.zeros((1, 2, 2), np.uint8))
    finally:
        blocked.close(timeout=0)


# ----------------------------------------------------------------------------- WebSocket
def test_websocket_stream_garbage_and_limits(make_client, face_jpeg):
    c = make_client(max_mb=1, ws_max_errors=3)
    with c.websocket_connect("/v1/stream?tta=flip") as ws:
        for n in (1, 2):
            ws.send_bytes(face_jpeg)
            m = ws.receive_json()
            assert m["type"] == "faces" and m["frame"] == n and m["tta"] == "flip" and len(m["faces"]) == 1
            assert m["faces"][0]["track"] == 1                    # the same face keeps its track id
            assert set(m["faces"][0]["raw"]) == set(m["faces"][0]["probabilities"])
        ws.send_text("garbage")                                  # an error message, the stream goes on
        assert ws.receive_json()["status"] == 400
        ws.send_text('{"min_face": 0.9, "tta": "none"}')
        assert ws.receive_json()["type"] == "options"
        ws.send_bytes(face_jpeg)
        m = ws.receive_json()
        assert m["frame"] == 3 and m["faces"] == [] and m["tta"] == "none"
        ws.send_bytes(b"\x89PNG broken")
        assert ws.receive_json()["status"] == 415
        ws.send_text('{"colour": 1}')
        assert "unknown option" in ws.receive_json()["error"]
        ws.send_bytes(face_jpeg)                                 # a good frame resets the error count
        assert ws.receive_json()["type"] == "faces"
        for _ in range(3):                                       # three bad messages in a row: closed
            ws.send_text("[1, 2]")
            assert ws.receive_json()["type"] == "error"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1008
    with c.websocket_connect("/v1/stream") as ws:               # a frame above the size limit
        ws.send_bytes(b"\0" * (1024 * 1024 + 1))
        assert ws.receive_json()["status"] == 413
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1009


def test_websocket_that_stops_mid_stream_leaves_the_server_serving(make_client, face_jpeg):
    c = make_client()
    service = c.app.state.service
    entered, release = _block(c.app)
    with c.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(face_jpeg)
        assert entered.wait(60)              # the frame is in the model when the client goes away
    release.set()
    _wait(lambda: service.in_flight == 0)
    with c.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(face_jpeg)
        assert ws.receive_json()["type"] == "faces"
    assert c.post("/v1/predict", content=face_jpeg).status_code == 200


def test_websocket_smooths_per_track(make_client, face_jpeg):
    """Frames alternating between the face and its mirror: raw probabilities jump, smoothed ones
    (over 60 s) stay near the first frame's; smooth 0 gives the raw values."""
    import cv2

    from ferkit.data import decode_image

    mirror = _jpeg(cv2.flip(decode_image(face_jpeg, color=True), 1))
    c = make_client()
    with c.websocket_connect("/v1/stream") as ws:
        ws.send_text('{"smooth": 60}')
        assert ws.receive_json()["smooth"] == 60
        got = []
        for data in (face_jpeg, mirror, face_jpeg, mirror):
            ws.send_bytes(data)
            got.append(ws.receive_json()["faces"][0])
        assert len({f["track"] for f in got}) == 1
        first = np.array(list(got[0]["probabilities"].values()))
        raw = np.array([list(f["raw"].values()) for f in got])
        smooth = np.array([list(f["probabilities"].values()) for f in got])
        np.testing.assert_allclose(first, raw[0], atol=1e-6)        # a new track starts at its raw values
        assert np.abs(smooth - first).max() < np.abs(raw - first).max()
        ws.send_text('{"smooth": 0}')
        ws.receive_json()
        ws.send_bytes(mirror)
        f = ws.receive_json()["faces"][0]
        assert f["probabilities"] == f["raw"]
        ws.send_text('{"smooth": -1}')
        assert ws.receive_json()["status"] == 400


def test_stream_tracks_survive_slow_frames_and_smooth_in_real_time(monkeypatch):
    import ferkit.serve.app as app_module

    clock = [100.0]
    monkeypatch.setattr(app_module.time, "monotonic", lambda: clock[0])
    live = app_module.Stream(smooth=1.0)
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    (k1, p1), = live.update([(10, 10, 50, 50)], [a])
    clock[0] += 5.0                                        # a slow machine: 5 s between two frames
    (k2, p2), = live.update([(12, 10, 50, 50)], [b])
    assert k1 == k2 and np.allclose(p1, a)
    np.testing.assert_allclose(p2, a + (1 - np.exp(-5.0)) * (b - a))   # smoothing uses the real 5 s
    for _ in range(5):                                     # the face is gone for 5 frames: its track ends
        clock[0] += 5.0
        assert live.update([], []) == []
    (k3, _), = live.update([(12, 10, 50, 50)], [a])
    assert k3 != k1


# ----------------------------------------------------------------------------- the CLI
def test_cli_failures_are_one_line(capsys, monkeypatch, tmp_path):
    import socket

    from ferkit.cli import run

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        cases = [(["serve", "--port", str(port)], "port is in use"),
                 (["serve", "--host", "no-such-host.invalid"], "unknown host"),
                 (["serve", "--host", "192.0.2.77", "--port", "0"], "no such address"),
                 (["serve", str(tmp_path / "missing.safetensors"), "--port", "0"], "does not exist"),
                 (["serve", "--max-mb", "0", "--port", "0"], "max-mb")]
        for argv, words in cases:
            assert run(argv) == 1, argv
            err = capsys.readouterr().err
            assert words in err and err.count("\n") == 1 and "Traceback" not in err, err
    finally:
        busy.close()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    assert run(["serve", str(bad), "--port", "0"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    # without the web stack: how to install it, in one line
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    assert run(["serve", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "pip install 'ferkit[serve]'" in err and err.count("\n") == 1
