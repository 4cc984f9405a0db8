"""Prometheus metrics, registered in the default registry (exposed by the worker's metrics
endpoint). Names follow Prometheus conventions: `facestream_<what>_<unit>`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TRITON_UP = Gauge(
    "facestream_triton_up", "1 while the Triton server answers the embedder, 0 while it is unavailable", ["url"]
)
TRITON_RETRIES = Counter(
    "facestream_triton_unavailable_retries_total", "Embedding requests retried because Triton was unavailable", ["url"]
)

EVENTS_CONSUMED = Counter("facestream_events_consumed_total", "Events a stage consumed", ["stage"])
EVENTS_PRODUCED = Counter("facestream_events_produced_total", "Events a stage produced", ["stage", "topic"])
MODEL_POOL_RESTARTS = Counter(
    "facestream_model_pool_restarts_total", "Model process pools replaced after a model process died"
)
TRANSIENT_RETRIES = Counter(
    "facestream_transient_retries_total",
    "Events processed again after a failure that may pass (a server away, a timeout)",
    ["stage", "reason"],
)
EMIT_RETRIES = Counter(
    "facestream_emit_retries_total", "Outputs and dead letters sent again after a transient broker error", ["stage"]
)
DEAD_LETTERS = Counter("facestream_dead_letters_total", "Events a stage dead-lettered", ["stage", "reason"])
STAGE_SECONDS = Histogram(
    "facestream_stage_seconds",
    "Processing time per event (its share of the batch)",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EMBED_BATCH = Histogram("facestream_embedder_batch_size", "Faces per embedding call", buckets=(1, 2, 4, 8, 16, 32, 64))
INFERENCE_SECONDS = Histogram(
    "facestream_inference_seconds",
    "Embedding time per batch",
    ["backend"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SEARCH_SECONDS = Histogram(
    "facestream_gallery_search_seconds",
    "Gallery search time per face",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
WEBHOOKS = Counter(
    "facestream_webhook_deliveries_total",
    "Webhook attempts by HTTP status class ('error': no answer)",
    ["subscription", "status_class"],
)
WEBHOOK_OUTCOMES = Counter(
    "facestream_webhook_outcomes_total",
    "What became of webhook deliveries: delivered, retry_scheduled, dead_lettered, deferred, dropped",
    ["subscription", "outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "facestream_webhook_delivery_seconds",
    "Time of one webhook attempt",
    ["subscription"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
END_TO_END_SECONDS = Histogram(
    "facestream_end_to_end_seconds",
    "From submission to webhook delivered",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
CONSUMER_LAG = Gauge("facestream_consumer_lag", "End offset minus committed offset", ["group", "topic", "partition"])


def status_class(status: int | None) -> str:
    """2xx, 4xx, 5xx, or 'error' when no HTTP status came back (timeout, refused)."""
    return f"{status // 100}xx" if status else "error"
