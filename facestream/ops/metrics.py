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
CONSUMER_LAG = Gauge(
    "facestream_consumer_lag",
    "End offset minus committed offset (0 on a retry tier whose next job is not due: that is scheduled, not lag)",
    ["group", "topic", "partition"],
)
CONSUMER_LAG_SECONDS = Gauge(
    "facestream_consumer_lag_seconds",
    "Age of the oldest record the group has not consumed (its Kafka timestamp); 0 when it lags not at all",
    ["group", "topic", "partition"],
)
SCHEDULED_RETRIES = Gauge(
    "facestream_scheduled_retries", "Webhook retries waiting in a tier for their due time (not lag)", ["group", "topic"]
)
NEXT_RETRY_DUE = Gauge(
    "facestream_scheduled_retry_next_due_timestamp_seconds",
    "When the next scheduled retry in a tier falls due (Unix time); 0 when none waits",
    ["group", "topic"],
)
WORKER_READY = Gauge("facestream_worker_ready", "1 while the worker is ready (its /readyz answers 200), else 0")
COMPONENT_READY = Gauge("facestream_component_ready", "1 while a component the worker needs is ready", ["component"])
OBJECTIVE_SECONDS = Gauge(
    "facestream_objective_seconds",
    "Service-level objectives from the settings: end_to_end (p99 submission to webhook), erasure (request to receipt)",
    ["objective"],
)
SUBSCRIPTION_DISABLED = Gauge(
    "facestream_subscription_disabled",
    "1 while a subscription is disabled; by: 'gone' (its endpoint answered 410) or 'operator'",
    ["subscription", "by"],
)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """The q-quantile estimated from cumulative histogram buckets (upper bound, count), sorted,
    the last `+Inf`: as Prometheus's `histogram_quantile` does it, linear interpolation inside
    the bucket that holds the rank (from 0 in the first bucket; the last finite bound when the
    rank falls in `+Inf`). NaN without observations. An estimate: exact only as far as the
    observations spread evenly inside their bucket."""
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def status_class(status: int | None) -> str:
    """2xx, 4xx, 5xx, or 'error' when no HTTP status came back (timeout, refused)."""
    return f"{status // 100}xx" if status else "error"
