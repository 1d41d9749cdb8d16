"""The HTTP API and pages served by callpull.asgi.application as deployed: Django's
handler in one trip to the HTTP pool per request (callpull/http.py)."""

import asyncio
import json
import threading
import uuid
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from channels.layers import get_channel_layer
from django.core import signals
from django.db import OperationalError, connection
from django.http import HttpResponse, StreamingHttpResponse
from django.urls import path

from callpull import calls
from callpull.http import OneTripHandler

pytestmark = pytest.mark.django_db(transaction=True)


def _scope(method: str, route: str, headers: list, query: str = "") -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": route, "raw_path": route.encode(), "query_string": query.encode(), "root_path": "",
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
            "headers": [(b"host", b"127.0.0.1:8000"), *headers]}


async def _exchange(app, scope: dict, body: bytes = b"", timeout: float = 10):
    """One request; returns (status, headers, body)."""
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "http.request", "body": body})
    start = await communicator.receive_output(timeout)
    content = b""
    while True:
        message = await communicator.receive_output(timeout)
        content += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.wait(timeout)
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, content


def _request(method: str, route: str, *, token: str | None = None, body=None, app=None, headers=()):
    from callpull.asgi import application

    data = b"" if body is None else json.dumps(body).encode()
    headers = [*headers, (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return async_to_sync(_exchange)(app or application, _scope(method, route, headers), data)


def _ring_body(line) -> dict:
    return {"report_id": str(uuid.uuid4()), "line": str(line.pk), "caller": "+15550009999", "caller_name": "Bob"}


def test_an_api_request_runs_whole_in_one_http_pool_thread(handset, line):
    threads = []

    def started(**kwargs):
        threads.append(("started", threading.current_thread().name))

    def finished(**kwargs):
        threads.append(("finished", threading.current_thread().name))

    real = calls.call_report

    def call_report(**kwargs):
        threads.append(("view", threading.current_thread().name))
        return real(**kwargs)

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    try:
        calls.call_report = call_report
        status, headers, body = _request("POST", "/api/v1/calls", token=handset[1], body=_ring_body(line))
    finally:
        calls.call_report = real
        signals.request_started.disconnect(started)
        signals.request_finished.disconnect(finished)
    assert status == 201, body
    assert json.loads(body)["instruction"]["action"] == "keep_ringing"
    # Django's middleware still answered around the view, in the same trip.
    assert (headers["x-content-type-options"], headers["x-frame-options"]) == ("nosniff", "DENY")
    assert [step for step, _ in threads] == ["started", "view", "finished"]
    assert len({name for _, name in threads}) == 1 and threads[0][1].startswith("http")


def test_an_immediate_ring_report_waits_for_the_ack_on_the_event_loop_from_its_pool_thread(handset, line, tablet,
                                                                                          online, settings):
    """The report's async_to_sync (the wait for the first receipt) runs on the main
    event loop: the frame reaches the socket and the socket's ack comes back through
    the reply channel while the pool thread waits."""
    settings.RING_ACK_WAIT_SECONDS = 5  # longer than the test could take: the ack ends the wait
    line.policy = "immediate"
    line.save(update_fields=["policy"])
    socket = online(tablet[0])
    layer = get_channel_layer()
    from callpull.asgi import application

    async def device_acks():
        message = await layer.receive(socket.channel)
        assert json.loads(message["text"])["type"] == "call.ringing"
        await layer.send(message["ack_to"], {"type": "ack.receipt", "device": str(tablet[0].pk)})

    async def both():
        data = json.dumps(_ring_body(line)).encode()
        scope = _scope("POST", "/api/v1/calls", [(b"content-type", b"application/json"),
                                                 (b"content-length", str(len(data)).encode()),
                                                 (b"authorization", f"Bearer {handset[1]}".encode())])
        acking = asyncio.ensure_future(device_acks())
        answer = await _exchange(application, scope, data)
        await asyncio.wait_for(acking, 5)
        return answer

    status, _, body = async_to_sync(both)()
    assert status == 201, body
    assert json.loads(body)["instruction"]["action"] == "reject"


def test_a_database_outage_is_503_in_the_envelope(handset, line, monkeypatch):
    def unavailable(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(calls, "call_report", unavailable)
    status, headers, body = _request("POST", "/api/v1/calls", token=handset[1], body=_ring_body(line))
    assert status == 503 and headers["retry-after"] == "1"
    assert json.loads(body)["error"]["code"] == "service_unavailable"


def test_an_unknown_endpoint_is_the_404_envelope_and_a_page_keeps_its_headers():
    status, _, body = _request("GET", "/api/v1/nothing-here")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    status, headers, _ = _request("GET", "/")
    assert status == 200 and "content-security-policy" in headers and headers["x-frame-options"] == "DENY"


def test_static_files_under_static_url_go_to_djangos_static_handler_and_nothing_else_does():
    status, headers, body = _request("GET", "/static/callpull/web/app.js")
    assert status == 200 and body == (Path(__file__).resolve().parents[2] / "callpull/static/callpull/web/app.js"
                                       ).read_bytes()
    assert "x-frame-options" not in headers  # no middleware ran: Django's static handler, not the pool
    status, headers, _ = _request("GET", "/staticky/callpull/web/app.js")
    assert status == 404 and headers["x-frame-options"] == "DENY"


def test_a_browser_post_without_its_csrf_token_is_refused():
    status, _, body = _request("POST", "/admin/login/", body={"username": "ana", "password": "x"})
    assert status == 403 and b"CSRF" in body


def test_pool_threads_give_postgresql_connections_back_and_keep_sqlite_ones(handset):
    handler = OneTripHandler(threads=1, name="http-test")
    seen = []
    for _ in range(2):
        status, _, body = _request("GET", "/api/v1/account", token=handset[1], app=handler)
        assert status == 200, body
        seen.append(handler.pool.submit(lambda: connection.connection).result())
    if connection.vendor == "postgresql":
        assert seen == [None, None]  # closed by request_finished: back in the psycopg pool
    else:
        assert seen[0] is not None and seen[0] is seen[1]


# Streaming responses and queueing, on views of this module ---------------------------------

entered = threading.Event()
release = threading.Event()


def slow(request):
    entered.set()
    release.wait(10)
    return HttpResponse("slow")


quick_ran = threading.Event()


def quick(request):
    quick_ran.set()
    return HttpResponse("quick")


produced = []


def stream(request):
    def chunks():
        for index in range(1000):
            produced.append(index)
            yield f"{index}\n".encode()
    return StreamingHttpResponse(chunks())


urlpatterns = [path("slow", slow), path("quick", quick), path("stream", stream)]


def test_when_every_thread_is_busy_requests_queue_rather_than_fail(settings):
    settings.ROOT_URLCONF = __name__
    handler = OneTripHandler(threads=1, name="http-test")
    entered.clear()
    release.clear()
    quick_ran.clear()

    async def both():
        blocked = asyncio.ensure_future(_exchange(handler, _scope("GET", "/slow", [])))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(_exchange(handler, _scope("GET", "/quick", [])))
        await asyncio.sleep(0.2)  # its body read, the second request is handed to the pool
        assert not quick_ran.is_set() and not queued.done()  # the one thread is busy: it waits
        release.set()
        return await blocked, await queued

    slow_answer, quick_answer = async_to_sync(both)()
    assert (slow_answer[0], slow_answer[2]) == (200, b"slow")
    assert (quick_answer[0], quick_answer[2]) == (200, b"quick")


def test_a_streaming_response_is_streamed_and_closed_in_its_thread(settings):
    settings.ROOT_URLCONF = __name__
    handler = OneTripHandler(threads=1, name="http-test")
    finished = []

    def on_finished(**kwargs):
        finished.append(threading.current_thread().name)

    signals.request_finished.connect(on_finished)
    try:
        status, _, body = async_to_sync(_exchange)(handler, _scope("GET", "/stream", []))
    finally:
        signals.request_finished.disconnect(on_finished)
    assert status == 200 and body == "".join(f"{i}\n" for i in range(1000)).encode()
    assert len(finished) == 1 and finished[0].startswith("http-test")


def test_a_streaming_response_stops_when_the_client_goes_away(settings):
    settings.ROOT_URLCONF = __name__
    handler = OneTripHandler(threads=1, name="http-test")
    produced.clear()

    async def leave_early():
        communicator = ApplicationCommunicator(handler, _scope("GET", "/stream", []))
        await communicator.send_input({"type": "http.request", "body": b""})
        assert (await communicator.receive_output(10))["status"] == 200
        await communicator.receive_output(10)
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait(10)

    async_to_sync(leave_early)()
    assert 0 < len(produced) < 1000
