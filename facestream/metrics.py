"""Prometheus metrics, registered in the default registry (exposed by the worker's metrics
endpoint). Names follow Prometheus conventions: `facestream_<what>_<unit>`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

TRITON_UP = Gauge(
    "facestream_triton_up", "1 while the Triton server answers the embedder, 0 while it is unavailable", ["url"]
)
TRITON_RETRIES = Counter(
    "facestream_triton_unavailable_retries_total", "Embedding requests retried because Triton was unavailable", ["url"]
)
