"""`ferkit serve`'s API contract: typed answers (/openapi.json's schemas, and every answer checked
against them), only the error codes the server really sends, several images in one request, and
video jobs (a tiny clip made here with OpenCV) with their downloads and expiry."""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'ferkit[serve]'")
import test_serve as _base  # noqa: E402 - its fixtures and helpers

_wait = _base._wait
face_jpeg, make_client, recognizer = _base.face_jpeg, _base.make_client, _base.recognizer   # the fixtures

from ferkit.serve.schemas import BatchResponse, Face, Job, ModelsResponse, PredictResponse  # noqa: E402


# ----------------------------------------------------------------------------- the contract
def test_openapi_has_real_schemas_and_only_real_error_codes(make_client):
    spec = make_client().get("/openapi.json").json()
    text = json.dumps(spec)
    assert "``" not in text and ":func:" not in text                   # Markdown, not RST
    assert "422" not in {code for item in spec["paths"].values() for op in item.values() for code in op["responses"]}
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    schemas = spec["components"]["schemas"]

    def props(ref_or_schema) -> set:
        s = ref_or_schema
        if "$ref" in s:
            s = schemas[s["$ref"].rsplit("/", 1)[1]]
        return set(s.get("properties", {}))

    for path, item in spec["paths"].items():
        for method, op in item.items():
            ok = op["responses"].get("200") or op["responses"]["202"]
            content = ok["content"]
            if "application/json" in content and path != "/v1/jobs/{job_id}/{name}":
                schema = content["application/json"]["schema"]
                options = schema.get("anyOf", [schema])
                assert all(props(o) for o in options), (method, path, schema)   # a real body, not {}
            for code, resp in op["responses"].items():
                if code.startswith(("4", "5")):
                    assert resp["content"]["application/json"]["schema"]["$ref"].endswith("/Error"), (path, code)
    predict = spec["paths"]["/v1/predict"]["post"]
    assert set(predict["responses"]) == {"200", "400", "401", "408", "413", "415", "429", "503", "504"}
    assert {"box", "label", "probabilities", "detector_score", "keypoints", "yaw", "pitch", "roll",
            "landmarks"} <= set(schemas["Face"]["properties"])
    assert props({"$ref": "#/components/schemas/PredictResponse"}) >= {"faces", "width", "height", "timing_ms"}


def test_answers_match_their_schemas(make_client, face_jpeg, recognizer):
    c = make_client()
    one = PredictResponse.model_validate(c.post("/v1/predict", content=face_jpeg).json())
    assert len(one.faces) == 1 and isinstance(one.faces[0], Face)
    assert 0.5 <= one.faces[0].detector_score <= 1 and one.scale == 1.0   # the default BlazeFace gives a score
    ModelsResponse.model_validate(c.get("/v1/models").json())
    face = c.post("/v1/predict", content=face_jpeg).json()["faces"][0]
    for key in ("detector_score", "keypoints", "landmarks", "yaw", "pitch"):   # the record's fields
        assert key in face


def test_detector_fields_come_from_the_face_record_in_the_answers_pixels():
    from ferkit.serve.app import _detector_fields

    empty = dict.fromkeys(("detector_score", "keypoints", "yaw", "pitch", "roll", "landmarks"))
    none = _detector_fields(empty, 12.0, 1.0)
    assert none == {**empty, "roll": 12.0}                     # no pose: the roll the crop was levelled by
    rich = {"detector_score": 0.9123, "keypoints": [[10.0, 20.0], [30.0, 40.0]], "yaw": 12.3, "pitch": -3.2,
            "roll": 4.0, "landmarks": [[1.0, 2.0, 0.5]]}
    got = _detector_fields(rich, 12.0, 2.0)                    # points in the original's pixels (scale 2)
    assert got == {**rich, "keypoints": [[20.0, 40.0], [60.0, 80.0]], "landmarks": [[2.0, 4.0, 0.5]]}
    assert rich["keypoints"] == [[10.0, 20.0], [30.0, 40.0]]   # the record itself is not changed
    Face.model_validate({"box": [0, 0, 1, 1], "label": "a", "confidence": 1.0, "probabilities": {"a": 1.0}, **got})


# ----------------------------------------------------------------------------- several images
def test_several_images_in_one_request(make_client, face_jpeg):
    import cv2

    c = make_client()
    noise = cv2.imencode(".png", np.zeros((40, 50), np.uint8))[1].tobytes()
    files = [("file", ("a.jpg", face_jpeg, "image/jpeg")), ("file", ("junk.bin", b"not an image", "image/jpeg")),
             ("file", ("b.png", noise, "image/png")), ("file", ("c.jpg", face_jpeg[:200], "image/jpeg"))]
    r = c.post("/v1/predict?tta=flip", files=files)
    assert r.status_code == 200, r.text
    body = BatchResponse.model_validate(r.json())
    assert body.images == 4 and body.failed == 2
    assert [(x.index, x.filename, x.status) for x in body.results] == [(0, "a.jpg", 200), (1, "junk.bin", 415),
                                                                     (2, "b.png", 200), (3, "c.jpg", 400)]
    assert len(body.results[0].result.faces) == 1 and body.results[0].result.tta == "flip"
    assert body.results[2].result.faces == [] and body.results[1].result is None and body.results[1].error
    single = c.post("/v1/predict?tta=flip", files=[("file", ("a.jpg", face_jpeg, "image/jpeg"))]).json()
    assert single["faces"] == r.json()["results"][0]["result"]["faces"]          # one file: the plain answer
    few = make_client(max_images=2)
    r = few.post("/v1/predict", files=files[:3])
    assert r.status_code == 400 and "2" in r.json()["error"]


# ----------------------------------------------------------------------------- video jobs
def _clip(path: Path, frames: int = 12, fps: float = 10.0) -> Path:
    """A small MJPG clip: the face photo moving a little, then frames without it."""
    import cv2

    from ferkit.bundled import sample_photo

    face = cv2.resize(cv2.imread(str(sample_photo())), (150, 176), interpolation=cv2.INTER_AREA)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (320, 240))
    assert w.isOpened()
    for i in range(frames):
        img = np.full((240, 320, 3), 170, np.uint8)
        if i < frames - 2:
            img[30:206, 80 + 2 * i:230 + 2 * i] = face
        w.write(img)
    w.release()
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    return _clip(tmp_path_factory.mktemp("clip") / "clip.avi").read_bytes()


def _done(c, job_id: str, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def test_video_job_runs_and_its_files_download(make_client, clip):
    c = make_client()
    r = c.post("/v1/jobs?smooth=0", files={"file": ("my clip.avi", clip, "video/x-msvideo")})
    assert r.status_code == 202, r.text
    job = Job.model_validate(r.json())
    assert job.state in ("queued", "running") and job.files.predictions_csv is None
    done = Job.model_validate(_done(c, job.id))
    assert done.state == "done", done.error
    assert done.frames == 12 and done.faces >= 8 and done.tracks >= 1 and done.expires > done.created
    rows = list(csv.DictReader(io.StringIO(c.get(done.files.predictions_csv).text)))
    assert len(rows) == 12 and {r["frame"] for r in rows} == {str(i) for i in range(12)}
    assert rows[-1]["label"] == "" and rows[0]["label"] != ""                    # the last frames have no face
    summary = c.get(done.files.summary_json)
    assert summary.headers["content-type"].startswith("application/json")
    assert "my%20clip-summary.json" in summary.headers["content-disposition"]
    assert summary.json()["tracks"][0]["frames"] >= 8
    png = c.get(done.files.timeline_png)
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    raw = c.post("/v1/jobs", content=clip, headers={"Content-Type": "video/x-msvideo"})   # the raw body too
    assert raw.status_code == 202 and _done(c, raw.json()["id"])["state"] == "done"


def test_video_job_limits_and_expiry(make_client, clip):
    c = make_client(video_seconds=0.5, video_mb=1, job_ttl_s=0.5)
    service = c.app.state.service
    r = c.post("/v1/jobs", content=clip, headers={"Content-Type": "video/x-msvideo"})
    assert r.status_code == 413 and "--video-seconds" in r.json()["error"]        # 1.2 s of video
    assert c.post("/v1/jobs", content=b"\0" * (1024 * 1024 + 1)).status_code == 413
    r = c.post("/v1/jobs", content=b"not a video at all")
    assert r.status_code == 415 and "not a video" in r.json()["error"]
    assert c.post("/v1/jobs", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 415
    assert service.jobs.jobs == {}                                                 # refused uploads leave nothing
    root = service.jobs.root
    assert root is None or list(root.iterdir()) == [root / ".ferkit-serve-jobs"]
    service.config.video_seconds = 60
    job = c.post("/v1/jobs", content=clip).json()
    assert _done(c, job["id"])["state"] == "done"
    folder = service.jobs.root / job["id"]
    assert folder.is_dir() and not any(p.name.startswith("upload") for p in folder.iterdir())
    time.sleep(0.6)
    r = c.get(f"/v1/jobs/{job['id']}")
    assert r.status_code == 404 and "--job-ttl" in r.json()["error"]
    assert not folder.exists()                                                      # expired: its files deleted
    for bad in ("../../etc", "0123", "g" * 16):
        assert c.get(f"/v1/jobs/{bad}").status_code == 404
    assert c.get(f"/v1/jobs/{'0' * 16}/predictions.csv").status_code == 404


def test_job_queue_is_bounded_and_cleaned_on_close(make_client, clip, recognizer):
    from ferkit.serve import create_app

    c = make_client(max_jobs=1)
    service = c.app.state.service
    gate = __import__("threading").Event()
    real = service.jobs._run
    service.jobs._run = lambda job: gate.wait(30) and real(job)
    try:
        assert c.post("/v1/jobs", content=clip).status_code == 202
        r = c.post("/v1/jobs", content=clip)
        assert r.status_code == 503 and "--max-jobs" in r.json()["error"] and r.headers["retry-after"]
    finally:
        gate.set()
    root = service.jobs.root
    _wait(lambda: service.jobs.pending == 0)
    service.close()
    assert not root.exists()                                                        # its own folder, gone
    assert create_app(recognizer).state.service.jobs.root is None                   # made on the first upload
