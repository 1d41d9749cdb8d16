"""callpull's metrics, in Prometheus' text format (prometheus_client).

The one module of the product that imports prometheus_client (.importlinter). It lives in
notifications, the lowest package that counts something (pushes, sockets, receipts), and
callpull imports it for what it counts (rings, webhooks, provider errors) and for the
`/metrics` view (callpull.metrics). Incrementing costs a lock and an addition: nothing
here touches the database or the network.

- `callpull_rings_total`: ring reports that created a call.
- `callpull_pushes_total{transport, outcome}`: one per push with its final outcome, as
  the transport records it (`accepted`, or the error: `unregistered`, `unavailable`,
  `timeout`, `gone`, ...). `transport` is the push service (`fcm`, `apns`, `webpush`):
  notifications.push_results calls `push_outcome(transport, outcome)` for every transport of
  notifications.fanout.PUSH_TRANSPORTS; a new transport needs nothing else here.
- `callpull_ring_first_receipt_seconds`: from the ring report to the moment the call's
  reject decision learns of the first receipt (a device's ack, or a push service accepting
  a push), for calls whose policy waits for one (`immediate`).
- `callpull_webhook_seconds{endpoint}`: the provider's webhooks, from the request to the answer.
- `callpull_websockets_open`: authenticated device sockets open.
- `callpull_provider_errors_total{action}`: provider REST requests that failed (each failed
  try, transient or final; `moot` answers about a call already over are not errors).

One process (one uvicorn worker) needs nothing. Several workers each count their own
share: set PROMETHEUS_MULTIPROC_DIR to an empty directory, the same for every worker,
and emptied before the server starts; `/metrics` then adds up every worker's files
(prometheus_client's multiprocess mode; docs/CONTRACT.md, "Metrics").
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

RINGS = Counter("callpull_rings", "Ring reports that created a call.")
PUSHES = Counter("callpull_pushes", "Pushes by transport and final outcome.", ["transport", "outcome"])
RING_FIRST_RECEIPT = Histogram(
    "callpull_ring_first_receipt_seconds",
    "From the ring report to the first receipt its reject decision learnt of (immediate policy).",
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0))
WEBHOOK = Histogram("callpull_webhook_seconds", "Provider webhooks, request to answer.", ["endpoint"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
WEBSOCKETS_OPEN = Gauge("callpull_websockets_open", "Authenticated device WebSockets open.",
                        multiprocess_mode="livesum")
PROVIDER_ERRORS = Counter("callpull_provider_errors", "Provider REST requests that failed (each try).",
                          ["action"])


def ring_created() -> None:
    RINGS.inc()


def push_outcome(transport: str, outcome: str, count: int = 1) -> None:
    PUSHES.labels(transport=transport, outcome=outcome).inc(count)


def first_receipt(seconds: float) -> None:
    RING_FIRST_RECEIPT.observe(max(0.0, seconds))


def webhook_seconds(endpoint: str, seconds: float) -> None:
    WEBHOOK.labels(endpoint=endpoint).observe(seconds)


def websocket_opened() -> None:
    WEBSOCKETS_OPEN.inc()


def websocket_closed() -> None:
    WEBSOCKETS_OPEN.dec()


def provider_error(action: str) -> None:
    PROVIDER_ERRORS.labels(action=action).inc()


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format (version 0.0.4, which every Prometheus reads),
    and its content type: this process's, or every worker's in multiprocess mode."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4
    return generate_latest(REGISTRY), CONTENT_TYPE_PLAIN_0_0_4
