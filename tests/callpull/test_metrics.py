"""/metrics: off without METRICS_TOKEN, 401 without the right bearer token, Prometheus'
text format with it; and the counts move with what the service does (a ring, its first
receipt, a push outcome, a webhook, a socket, a failed provider request)."""

import asyncio
import json
import os
import subprocess
import sys
import uuid

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from channels.routing import URLRouter
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from callpull import actions
from callpull.telephony import provider
from notifications import fcm, push_results
from notifications.routing import websocket_urlpatterns
from tests.callpull.conftest import forward, report
from tests.conftest import make_device

pytestmark = pytest.mark.django_db

TOKEN = "metrics-test-token-" + "x" * 16
NAMES = ("callpull_rings_total", "callpull_pushes_total", "callpull_ring_first_receipt_seconds",
         "callpull_webhook_seconds", "callpull_websockets_open", "callpull_provider_errors_total")


@pytest.fixture
def metrics_on(settings):
    settings.METRICS_TOKEN = TOKEN


def scrape() -> dict:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_are_off_without_a_token(settings):
    settings.METRICS_TOKEN = None
    response = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer anything")
    assert response.status_code == 404
    assert b"callpull_rings_total" not in response.content


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-of-some-length", f"Basic {TOKEN}", f"Bearer {TOKEN}x",
                                    "Bearer ", TOKEN])
def test_metrics_need_the_right_bearer_token(metrics_on, header):
    extra = {} if header is None else {"HTTP_AUTHORIZATION": header}
    response = Client().get("/metrics", **extra)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"callpull_" not in response.content


def test_metrics_are_prometheus_text_with_every_metric(metrics_on):
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.content.decode()
    families = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert families["callpull_rings"] == "counter"
    assert families["callpull_pushes"] == "counter"
    assert families["callpull_ring_first_receipt_seconds"] == "histogram"
    assert families["callpull_webhook_seconds"] == "histogram"
    assert families["callpull_websockets_open"] == "gauge"
    assert families["callpull_provider_errors"] == "counter"
    for name in NAMES:
        assert f"# TYPE {name.removesuffix('_total')}" in text


def test_a_post_to_metrics_is_refused(metrics_on):
    assert Client().post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


def test_a_ring_and_its_first_receipt_are_counted(metrics_on, handset_api, line, tablet, desktop, online):
    line.policy = "immediate"
    line.save()
    tablet_socket, desktop_socket = online(tablet[0]), online(desktop[0])
    before = scrape()
    response = report(handset_api, line, report_id=uuid.uuid4())
    assert response.status_code == 201
    assert response.json()["instruction"]["reason"] == "awaiting_delivery"
    middle = scrape()
    assert value(middle, "callpull_rings_total") == value(before, "callpull_rings_total") + 1
    assert value(middle, "callpull_ring_first_receipt_seconds_count") == \
        value(before, "callpull_ring_first_receipt_seconds_count")

    tablet_socket.ack()   # the first receipt: the reject goes out, and the latency is observed
    desktop_socket.ack()  # a second one is no first receipt
    after = scrape()
    assert value(after, "callpull_ring_first_receipt_seconds_count") == \
        value(before, "callpull_ring_first_receipt_seconds_count") + 1
    assert value(after, "callpull_ring_first_receipt_seconds_sum") > \
        value(before, "callpull_ring_first_receipt_seconds_sum")


def test_a_repeated_report_counts_one_ring(metrics_on, handset_api, line, tablet, online):
    online(tablet[0])
    report_id = uuid.uuid4()
    before = value(scrape(), "callpull_rings_total")
    assert report(handset_api, line, report_id=report_id).status_code == 201
    assert report(handset_api, line, report_id=report_id).status_code == 200
    assert value(scrape(), "callpull_rings_total") == before + 1


def test_push_outcomes_are_counted_by_transport_and_outcome(metrics_on, user):
    device = make_device(user, kind="desktop", fcm_token="fcm-" + "y" * 60)[0]

    def result(ok, error=None):
        push = fcm.Push(device_id=str(device.pk), token=device.fcm_token, data={"type": "t"}, collapse_key="c",
                        deadline=2e9)
        return push_results.Outcome(fcm.PushResult(push, ok, "projects/p/messages/1" if ok else None, error,
                                                   error == "unregistered", 1, 1.7e9 if ok else None), "e", None)

    before = scrape()
    push_results.record([result(True), result(True), result(False, "unavailable"), result(False, "unregistered")])
    after = scrape()
    for outcome, n in (("accepted", 2), ("unavailable", 1), ("unregistered", 1)):
        assert value(after, "callpull_pushes_total", transport="fcm", outcome=outcome) == \
            value(before, "callpull_pushes_total", transport="fcm", outcome=outcome) + n


def test_webhooks_are_timed_by_endpoint(metrics_on, client):
    before = value(scrape(), "callpull_webhook_seconds_count", endpoint="voice")
    forward(client, sid="CA" + uuid.uuid4().hex)
    after = scrape()
    assert value(after, "callpull_webhook_seconds_count", endpoint="voice") == before + 1
    assert value(after, "callpull_webhook_seconds_bucket", endpoint="voice", le="+Inf") >= before + 1


def test_failed_provider_requests_are_counted_by_action(metrics_on):
    def failing(elapsed, tries):
        raise provider.ProviderError("refused", status=400)

    def moot(elapsed, tries):
        raise provider.ProviderError("gone", status=404, gone=True)

    before = value(scrape(), "callpull_provider_errors_total", action="hangup")
    actions.provider_request("hangup", failing, budget=0)
    actions.provider_request("hangup", moot, budget=0)  # a call already over: no error
    assert value(scrape(), "callpull_provider_errors_total", action="hangup") == before + 1


@pytest.mark.django_db(transaction=True)
def test_open_websockets_are_a_gauge(metrics_on, user):
    _, token = make_device(user, kind="tablet", name="Tablet")

    async def connect():
        scope = {"type": "websocket", "path": "/ws/v1/", "query_string": b"",
                 "headers": [(b"authorization", f"Bearer {token}".encode())], "subprotocols": []}
        socket = ApplicationCommunicator(URLRouter(websocket_urlpatterns), scope)
        await socket.send_input({"type": "websocket.connect"})
        assert (await socket.receive_output(timeout=5))["type"] == "websocket.accept"
        assert json.loads((await socket.receive_output(timeout=5))["text"])["type"] == "hello"
        return socket

    async def close(socket):
        await socket.send_input({"type": "websocket.disconnect", "code": 1000})
        await socket.wait(timeout=5)

    async def scenario():
        start = await asyncio.to_thread(scrape)
        socket = await connect()
        opened = await asyncio.to_thread(scrape)
        await close(socket)
        closed = await asyncio.to_thread(scrape)
        return [value(s, "callpull_websockets_open") for s in (start, opened, closed)]

    start, opened, closed = async_to_sync(scenario)()
    assert (opened, closed) == (start + 1, start)


@pytest.mark.parametrize(("token", "ok"), [("short", False), ("x" * 16, True)])
def test_a_metrics_token_shorter_than_16_characters_stops_the_start(token, ok):
    env = {**os.environ, "METRICS_TOKEN": token, "DJANGO_SETTINGS_MODULE": "callpull.settings"}
    done = subprocess.run([sys.executable, "-c", "import django; django.setup()"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode == 0) == ok, done.stderr[-500:]
    if not ok:
        assert "METRICS_TOKEN must be at least 16 characters" in done.stderr
