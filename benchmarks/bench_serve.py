"""Load test of `ferkit serve` from localhost (a benchmark, not a test).

    .venv/bin/python benchmarks/bench_serve.py [--clients 8] [--requests 400] [--time-limit 120]
    .venv/bin/python benchmarks/bench_serve.py --soak 120          # errors and server RSS over time

Makes --images distinct 640x480 JPEGs with one face each (matplotlib's Grace Hopper pasted at a
random place and size on a blurred-noise background; only those where the detector finds exactly
one face are kept), then in the same run:
  1. `ferkit predict`'s rate on those files (``predict_inputs``: decode, detect, classify in batches;
     model loading excluded), one pass over the folder per round;
  2. the server (`ferkit serve --port 0` in a subprocess) under --clients concurrent clients, each
     posting the JPEGs as raw bodies over a kept-alive connection, --requests / --rounds answers
     per round (or --time-limit / --rounds seconds): throughput, p50/p95 latency, status codes.
     Rounds alternate 1 and 2, so that a machine shared with other work weighs on both alike;
  3. with --soak SECONDS: the same load for that long, the server's RSS and the error count every
     --sample seconds;
  4. with --limits: a fresh server (`--max-queue 2`) is tried with hostile clients: a 100-megapixel
     PNG and JPEG (time, status, server RSS), --idle connections that send nothing (how many the
     server closes within 75 s), and --ws-clients webcam streams for --ws-seconds (answers, 'busy'
     messages, closes). --limits-only skips 1-3.
Everything stays on 127.0.0.1 and ends within the limits given.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402


def make_photos(n: int, folder: Path, seed: int = 0) -> list[Path]:
    from ferkit import Recognizer
    from ferkit.bundled import sample_photo

    rng = np.random.default_rng(seed)
    face = cv2.imread(str(sample_photo()))[60:380, 120:420]
    r = Recognizer.load()
    paths: list[Path] = []
    tries = 0
    while len(paths) < n and tries < 5 * n:
        tries += 1
        bg = cv2.GaussianBlur((rng.random((480, 640, 3)) * 255).astype(np.uint8), (0, 0), 3)
        side = int(rng.integers(160, 260))
        f = cv2.resize(face, (side, int(side * face.shape[0] / face.shape[1])), interpolation=cv2.INTER_AREA)
        y, x = int(rng.integers(0, 480 - f.shape[0])), int(rng.integers(0, 640 - side))
        bg[y:y + f.shape[0], x:x + side] = f
        if len(r.predict(bg)) != 1:
            continue
        p = folder / f"photo_{len(paths):03d}.jpg"
        cv2.imwrite(str(p), bg, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(p)
    return paths


def predict_rate(model, folder: Path, out: Path) -> tuple[int, float]:
    from ferkit.predict import predict_inputs

    s = predict_inputs(model, [str(folder)], out, progress=False)
    return s.images, s.seconds


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """The resident memory of ``pid`` in MB (``field="VmHWM"``: its peak so far)."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Server:
    """`ferkit serve --port 0` in a subprocess; the URL comes from its first line."""

    def __init__(self, model, extra: list[str], log_level: str = "warning"):
        cmd = [sys.executable, "-m", "ferkit", "serve", *([model] if model else []), "--port", "0",
               "--log-level", log_level, *extra]
        self.log = tempfile.TemporaryFile("w+")       # a file, not a pipe: a chatty server never blocks on it
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        if "http://" not in line:
            self.proc.kill()
            raise SystemExit(f"the server did not start: {line}{self.log_text()[-2000:]}")
        url = line.split("http://", 1)[1].split("/", 1)[0]
        self.host, port = url.rsplit(":", 1)
        self.port = int(port)
        deadline = time.monotonic() + 60
        while self.get("/healthz")[0] != 200:
            if time.monotonic() > deadline:
                raise SystemExit("the server did not answer /healthz")
            time.sleep(0.2)

    def get(self, path: str):
        try:
            c = http.client.HTTPConnection(self.host, self.port, timeout=10)
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        except OSError:
            return 0, b""

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load(server: Server, bodies: list[bytes], clients: int, requests: int | None, seconds: float,
         on_sample=None, sample_s: float = 5.0) -> dict:
    """``clients`` threads post ``bodies`` round-robin until ``requests`` answers or ``seconds``."""
    lock = threading.Lock()
    state = {"next": 0, "lat": [], "codes": {}, "errors": [], "faces": 0}
    stop_at = time.monotonic() + seconds

    def take() -> int | None:
        with lock:
            if (requests is not None and state["next"] >= requests) or time.monotonic() > stop_at:
                return None
            state["next"] += 1
            return state["next"] - 1

    def client() -> None:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
        while (i := take()) is not None:
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/predict", body=bodies[i % len(bodies)],
                             headers={"Content-Type": "image/jpeg"})
                resp = conn.getresponse()
                data = resp.read()
                code = resp.status
            except (OSError, http.client.HTTPException) as exc:
                code, data = 0, b""
                conn.close()
                conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
                with lock:
                    state["errors"].append(repr(exc)[:120])
            dt = time.perf_counter() - t0
            with lock:
                state["codes"][code] = state["codes"].get(code, 0) + 1
                if code == 200:
                    state["lat"].append(dt)
                    state["faces"] += len(json.loads(data)["faces"])
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    next_sample = t0 + sample_s
    while any(t.is_alive() for t in threads):
        time.sleep(0.1)
        if on_sample is not None and time.perf_counter() >= next_sample:
            with lock:
                on_sample(time.perf_counter() - t0, sum(state["codes"].values()),
                          sum(v for k, v in state["codes"].items() if k != 200))
            next_sample += sample_s
    wall = time.perf_counter() - t0
    lat = np.array(state["lat"]) if state["lat"] else np.array([float("nan")])
    ok = state["codes"].get(200, 0)
    return {"clients": clients, "answered": sum(state["codes"].values()), "ok": ok, "wall_s": round(wall, 2),
            "photos_per_s": round(ok / wall, 2), "p50_s": round(float(np.percentile(lat, 50)), 3),
            "p95_s": round(float(np.percentile(lat, 95)), 3), "max_s": round(float(lat.max()), 3),
            "codes": {str(k): v for k, v in sorted(state["codes"].items())}, "faces": state["faces"],
            "errors": state["errors"][:5], "latencies": state["lat"]}


def huge_images() -> dict[str, bytes]:
    """A 10000x10000 PNG and JPEG (100 megapixels; small files, as a decompression bomb is), and a
    4800x4800 PNG (23 megapixels: within the default cap, decoded in full)."""
    import io

    from PIL import Image

    out = {}
    for name, fmt, side in (("100-megapixel PNG", "PNG", 10000), ("100-megapixel JPEG", "JPEG", 10000),
                            ("23-megapixel PNG", "PNG", 4800)):
        buf = io.BytesIO()
        Image.new("RGB", (side, side), (90, 120, 150)).save(buf, fmt)
        out[name] = buf.getvalue()
    return out


def post_once(server: Server, body: bytes) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    try:
        c = http.client.HTTPConnection(server.host, server.port, timeout=120)
        c.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/octet-stream"})
        r = c.getresponse()
        data = r.read()
        return r.status, time.perf_counter() - t0, data[:120].decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        return 0, time.perf_counter() - t0, repr(exc)


def idle_connections(server: Server, n: int, limit_s: float = 75.0) -> dict:
    """``n`` connections that send nothing: when does the server close each?"""
    import selectors
    import socket

    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    for _ in range(n):
        s = socket.create_connection((server.host, server.port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed: list[float] = []
    while len(closed) < n and time.monotonic() - t0 < limit_s:
        for key, _ in sel.select(timeout=0.5):
            try:
                data = key.fileobj.recv(1024)
            except OSError:
                data = b""
            if not data:
                closed.append(time.monotonic() - t0)
                sel.unregister(key.fileobj)
                key.fileobj.close()
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    return {"connections": n, "closed_within_s": limit_s, "closed": len(closed),
            "first_s": round(min(closed), 1) if closed else None, "last_s": round(max(closed), 1) if closed else None}


def disconnects(server: Server, n: int) -> dict:
    """``n`` clients that send half of an upload and leave (what the server logs is counted at the end)."""
    import socket

    t0 = time.monotonic()
    for _ in range(n):
        s = socket.create_connection((server.host, server.port))
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
                  + b"\xff" * 5000)
        time.sleep(0.01)
        s.close()
    time.sleep(1.0)
    return {"clients": n, "seconds": round(time.monotonic() - t0, 1)}


def ws_clients(server: Server, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """``clients`` webcam streams, each sending its next frame when the last is answered (after a
    'busy', after the Retry-After); counts answers by type and how the streams ended."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    lock = threading.Lock()
    state = {"faces": 0, "busy": 0, "error": 0, "closed_by_server": [], "finished": 0}

    def client(k: int) -> None:
        stop = time.monotonic() + seconds
        try:
            with connect(f"ws://{server.host}:{server.port}/v1/stream", max_size=None, open_timeout=30) as ws:
                i = k
                while time.monotonic() < stop:
                    ws.send(bodies[i % len(bodies)])
                    i += 1
                    m = json.loads(ws.recv(timeout=120))
                    with lock:
                        state[m["type"] if m["type"] in state else "error"] += 1
                    if m["type"] == "busy":
                        time.sleep(m.get("retry_after", 1))
                with lock:
                    state["finished"] += 1
        except ConnectionClosed as exc:
            with lock:
                state["closed_by_server"].append(getattr(exc.rcvd, "code", None))
        except (OSError, TimeoutError) as exc:
            with lock:
                state["closed_by_server"].append(repr(exc)[:80])

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 180)
    return {"clients": clients, "seconds": seconds, **state}


def check_limits(a, bodies: list[bytes]) -> dict:
    server = Server(a.model, ["--max-queue", "2", *a.serve_arg], log_level="info")
    out: dict = {"serve_args": ["--max-queue", "2", *a.serve_arg]}
    try:
        post_once(server, bodies[0])
        out["rss_start_mb"] = round(rss_mb(server.proc.pid), 1)
        for name, data in (huge_images() if a.huge else {}).items():
            status, secs, text = post_once(server, data)
            key = name.replace("-", "_").replace(" ", "_").lower()
            out[key] = {"bytes": len(data), "status": status, "seconds": round(secs, 2), "answer": text,
                        "rss_after_mb": round(rss_mb(server.proc.pid), 1),
                        "rss_peak_so_far_mb": round(rss_mb(server.proc.pid, "VmHWM"), 1)}
            print(f"{name} ({len(data) / 1024:.0f} KB): {status} in {secs:.2f} s; server RSS after "
                  f"{out[key]['rss_after_mb']} MB (peak so far {out[key]['rss_peak_so_far_mb']} MB); {text[:90]}")
        out["disconnects"] = disconnects(server, a.disconnects)
        print(f"clients leaving mid-upload: {out['disconnects']}")
        out["idle"] = idle_connections(server, a.idle)
        print(f"idle connections: {out['idle']}")
        out["ws"] = ws_clients(server, bodies, a.ws_clients, a.ws_seconds)
        print(f"WebSocket streams on --max-queue 2: {out['ws']}")
        out["rss_end_mb"] = round(rss_mb(server.proc.pid), 1)
    finally:
        server.stop()
    text = server.log_text()
    out["server_log_lines"] = len(text.splitlines())
    out["tracebacks_in_server_log"] = text.count("Traceback")
    out["disconnect_log_lines"] = text.count("disconnected mid-request")
    print(f"server log (--log-level info): {out['server_log_lines']} lines, {out['tracebacks_in_server_log']} "
          f"tracebacks, {out['disconnect_log_lines']} 'disconnected mid-request' lines")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model for both (default: the bundled one)")
    ap.add_argument("--images", type=int, default=40, help="distinct photos (default 40)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument("--requests", type=int, default=400, help="answers to collect, all rounds (default 400)")
    ap.add_argument("--rounds", type=int, default=4, help="alternating predict/server passes (default 4)")
    ap.add_argument("--time-limit", type=float, default=120.0,
                    help="seconds at most for the server passes, all rounds (default 120)")
    ap.add_argument("--soak", type=float, default=0.0, metavar="SECONDS", help="also run a soak this long")
    ap.add_argument("--sample", type=float, default=10.0, help="soak: seconds between RSS samples (default 10)")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra `ferkit serve` option, repeatable")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--limits", action="store_true", help="also try the limits with hostile clients (see above)")
    ap.add_argument("--limits-only", action="store_true", help="only the limits")
    ap.add_argument("--idle", type=int, default=50, help="--limits: idle connections (default 50)")
    ap.add_argument("--ws-clients", type=int, default=6, help="--limits: WebSocket streams (default 6)")
    ap.add_argument("--ws-seconds", type=float, default=30.0, help="--limits: seconds of streaming (default 30)")
    ap.add_argument("--disconnects", type=int, default=100,
                    help="--limits: clients that leave mid-upload (default 100)")
    ap.add_argument("--no-huge", dest="huge", action="store_false", help="--limits: skip the 100-megapixel images")
    a = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)     # progress shows as it happens, also into a file

    tmp = Path(tempfile.mkdtemp(prefix="ferkit-bench-serve-"))
    folder = tmp / "photos"
    folder.mkdir()
    t0 = time.perf_counter()
    photos = make_photos(a.images, folder)
    bodies = [p.read_bytes() for p in photos]
    print(f"machine: {machine()}")
    print(f"{len(photos)} photos 640x480 with one face each ({np.mean([len(b) for b in bodies]) / 1024:.0f} KB JPEGs, "
          f"made in {time.perf_counter() - t0:.0f} s)")

    results: dict = {"machine": machine(), "photos": len(photos), "clients": a.clients, "rounds": [],
                     "loadavg_start": os.getloadavg()}
    if a.limits or a.limits_only:
        results["limits"] = check_limits(a, bodies)
    if a.limits_only:
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=2) + "\n")
        return
    # predict and server passes alternate (A B A B ...), so a machine whose load drifts (shared cores)
    # weighs on both alike; the ratio is of the totals
    server = Server(a.model, a.serve_arg)
    pred_n = pred_s = serve_n = serve_s = 0.0
    latencies: list[float] = []
    codes: dict[str, int] = {}
    try:
        print(f"server pid {server.proc.pid}, RSS {rss_mb(server.proc.pid):.0f} MB after start; "
              f"load average {os.getloadavg()[0]:.1f}")
        load(server, bodies, a.clients, 2 * a.clients, 60)       # warm-up: the detector per thread, the model
        predict_rate(a.model, folder, tmp / "warm")
        for k in range(a.rounds):
            n, secs = predict_rate(a.model, folder, tmp / f"pred{k}")
            r = load(server, bodies, a.clients, a.requests // a.rounds, a.time_limit / a.rounds)
            pred_n, pred_s = pred_n + n, pred_s + secs
            serve_n, serve_s = serve_n + r["ok"], serve_s + r["wall_s"]
            latencies += r.pop("latencies")
            for c, v in r["codes"].items():
                codes[c] = codes.get(c, 0) + v
            results["rounds"].append({"predict_photos_per_s": round(n / secs, 2), **r})
            print(f"round {k + 1}: ferkit predict {n / secs:.1f} photos/s; server {r['photos_per_s']:.1f} photos/s "
                  f"(p50 {r['p50_s']} s, p95 {r['p95_s']} s, status {r['codes']})")
        lat = np.array(latencies)
        results["predict_photos_per_s"] = round(pred_n / pred_s, 2)
        results["serve_photos_per_s"] = round(serve_n / serve_s, 2)
        results["ratio"] = round(results["serve_photos_per_s"] / results["predict_photos_per_s"], 3)
        results["p50_s"] = round(float(np.percentile(lat, 50)), 3)
        results["p95_s"] = round(float(np.percentile(lat, 95)), 3)
        results["codes"] = codes
        results["healthz"] = json.loads(server.get("/healthz")[1] or b"{}")
        print(f"total: ferkit predict {results['predict_photos_per_s']} photos/s, server with {a.clients} clients "
              f"{results['serve_photos_per_s']} photos/s = {results['ratio']:.2f} x (target >= 0.90); latency "
              f"p50 {results['p50_s']} s, p95 {results['p95_s']} s (target <= 0.5 s); status {codes}")
        if a.soak > 0:
            samples = []

            def sample(t, answered, errors):
                samples.append((round(t, 1), answered, errors, round(rss_mb(server.proc.pid), 1)))
                print(f"  soak {t:6.0f} s: {answered} answers, {errors} errors, server RSS {samples[-1][3]} MB")

            sample(0.0, 0, 0)
            s = load(server, bodies, a.clients, None, a.soak, on_sample=sample, sample_s=a.sample)
            s.pop("latencies")
            sample(s["wall_s"], s["answered"], s["answered"] - s["ok"])
            rss = [x[3] for x in samples]
            results["soak"] = {**s, "rss_mb": samples, "rss_start_mb": rss[0], "rss_end_mb": rss[-1],
                               "rss_max_mb": max(rss)}
            print(f"soak {a.soak:.0f} s: {s['ok']} answers, {s['answered'] - s['ok']} errors, "
                  f"{s['photos_per_s']} photos/s, p95 {s['p95_s']} s; server RSS {rss[0]} -> {rss[-1]} MB "
                  f"(max {max(rss)})")
    finally:
        server.stop()
    results["loadavg_end"] = os.getloadavg()
    print(f"load average at the end {os.getloadavg()[0]:.1f} (other processes on this machine)")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
