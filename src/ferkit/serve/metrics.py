"""``GET /metrics``: the server's counters in Prometheus' text format (version 0.0.4), written here
(no client library needed): requests by route and status, a latency histogram per route, requests
in progress, the batcher's queue depth and batch sizes, WebSocket streams, refused connections.

Example output::

    # TYPE ferkit_requests_total counter
    ferkit_requests_total{route="/v1/predict",status="200"} 12
    # TYPE ferkit_request_seconds histogram
    ferkit_request_seconds_bucket{route="/v1/predict",le="0.1"} 3
    ...
"""
from __future__ import annotations

import bisect
import threading
from collections import defaultdict

#: Latency buckets (seconds) and batch-size buckets (faces per model call).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)     # the last: above every bucket (+Inf only)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out, running = [], 0
        for le, n in zip(self.buckets, self.counts):
            running += n
            out.append(f'{name}_bucket{{{labels}{sep}le="{le:g}"}} {running}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        lab = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{lab} {self.sum:.6f}", f"{name}_count{lab} {self.count}"]
        return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters the app and the protocol update; :meth:`text` renders them (with ``gauges``, read
    at scrape time)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batch = Histogram(BATCH_BUCKETS)
        self.events: dict[str, int] = defaultdict(int)    # rate_limited, disconnects, ws_busy, ...

    def request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, int(status))] += 1
            h = self.latency.get(route)
            if h is None:
                h = self.latency[route] = Histogram(LATENCY_BUCKETS)
            h.observe(seconds)

    def batch_size(self, faces: int) -> None:
        with self._lock:
            self.batch.observe(faces)

    def count(self, event: str, n: int = 1) -> None:
        with self._lock:
            self.events[event] += n

    def text(self, gauges: dict[str, tuple[str, float]] | None = None) -> str:
        """The exposition text; ``gauges`` maps a metric name to (help, value)."""
        out: list[str] = []
        with self._lock:
            out += ["# HELP ferkit_requests_total HTTP requests answered, by route and status.",
                    "# TYPE ferkit_requests_total counter"]
            out += [f'ferkit_requests_total{{route="{_escape(r)}",status="{s}"}} {n}'
                    for (r, s), n in sorted(self.requests.items())]
            out += ["# HELP ferkit_request_seconds Time from a request's headers to its answer.",
                    "# TYPE ferkit_request_seconds histogram"]
            for route, h in sorted(self.latency.items()):
                out += h.lines("ferkit_request_seconds", f'route="{_escape(route)}"')
            out += ["# HELP ferkit_batch_faces Faces per model call (the micro-batcher).",
                    "# TYPE ferkit_batch_faces histogram", *self.batch.lines("ferkit_batch_faces")]
            out += ["# HELP ferkit_events_total Refusals and incidents: rate_limited, disconnected, "
                    "ws_busy, header_timeout, connection_refused, too_large, timed_out.",
                    "# TYPE ferkit_events_total counter"]
            out += [f'ferkit_events_total{{event="{_escape(e)}"}} {n}' for e, n in sorted(self.events.items())]
        for name, (help_, value) in (gauges or {}).items():
            out += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(out) + "\n"
