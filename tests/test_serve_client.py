"""`ferkit.client` against a real server on 127.0.0.1: typed answers, batches, a video job and its
files, the server's errors as ServerError (status, message, Retry-After, request id)."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'ferkit[serve]'")
import test_serve as _base  # noqa: E402 - fixtures
import test_serve_api as _api  # noqa: E402
import test_serve_limits as _limits  # noqa: E402

from ferkit.client import Client, ServerError  # noqa: E402
from ferkit.errors import FerkitError  # noqa: E402

face_jpeg, recognizer, live_server, clip = _base.face_jpeg, _base.recognizer, _limits.live_server, _api.clip


def test_client_speaks_the_api(live_server, face_jpeg, clip, tmp_path):
    host, port = live_server(token="s3cret", rate=1000)
    c = Client(f"http://{host}:{port}", token="s3cret")
    assert c.health().status == "ok"
    assert c.models().models[0].classes
    photo = tmp_path / "face.jpg"
    photo.write_bytes(face_jpeg)
    one = c.predict(photo, tta="flip")
    assert one.tta == "flip" and len(one.faces) == 1 and abs(sum(one.faces[0].probabilities.values()) - 1) < 1e-3
    assert c.last_request_id
    batch = c.predict_many([face_jpeg, b"junk"])
    assert [r.status for r in batch.results] == [200, 415] and batch.failed == 1
    job = c.wait(c.submit_video(clip, smooth=0).id, timeout=120)
    assert job.state == "done" and job.frames == 12
    assert c.download(job.id, "predictions.csv").startswith(b"source,frame")
    assert "ferkit_requests_total" in c.metrics()
    with pytest.raises(ServerError) as err:
        Client(f"http://{host}:{port}", token="wrong").models()
    assert err.value.status == 401 and "token" in err.value.message and err.value.request_id
    with pytest.raises(ServerError) as err:
        c.predict(b"")
    assert err.value.status == 400
    with pytest.raises(ServerError) as err:
        c.job("0" * 16)
    assert err.value.status == 404
    with pytest.raises(FerkitError, match="cannot reach"):
        Client("http://127.0.0.1:9", timeout=5).health()


def test_client_imports_without_torch():
    code = "import sys, ferkit.client; print('torch' in sys.modules, 'cv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
