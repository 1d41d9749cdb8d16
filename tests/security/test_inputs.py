"""Bounded inputs (issue 12, attack 7): a JSON depth limit, a body-size limit that holds
for chunked bodies too, every API error in the envelope, and a webhook's bad input as
one WARNING line.

The parser and envelope tests run in process; the body-size and webhook tests drive a
running server (tests/e2e/support.py) over HTTP and raw sockets, since what they prove
is what the server reads off the connection and what it writes to its log.
"""

import json
import socket

import httpx
import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from rest_framework.test import APIClient

from callpull.http import OneTripHandler
from tests.conftest import error_code
from tests.e2e.support import PASSWORD, call, unique
from tests.e2e.support import error_code as http_error_code

LIMIT = 1024 * 1024  # DATA_UPLOAD_MAX_MEMORY_SIZE's default (MAX_REQUEST_BODY_BYTES)


def _post_json(client, path: str, text: str):
    return client.generic("POST", path, text, content_type="application/json")


# JSON depth ------------------------------------------------------------------

@pytest.mark.django_db
def test_json_nested_deeper_than_the_limit_is_400_json_too_deep_without_credentials(settings):
    anonymous = APIClient()
    response = _post_json(anonymous, "/api/v1/devices", "[" * 100_000)
    assert response.status_code == 400
    assert error_code(response) == "json_too_deep"
    depth = settings.API_JSON_MAX_DEPTH
    assert error_code(_post_json(anonymous, "/api/v1/devices", "[" * (depth + 1) + "]" * (depth + 1))) \
        == "json_too_deep"
    # At the limit the body is parsed (and refused for what it is: not a registration).
    at_limit = _post_json(anonymous, "/api/v1/devices", "[" * depth + "]" * depth)
    assert at_limit.status_code == 400 and error_code(at_limit) == "invalid_input"
    # Brackets inside strings are text, escaped quotes included.
    in_strings = _post_json(anonymous, "/api/v1/devices", json.dumps(
        {"username": '\\"[' * (depth + 5), "password": "{" * (depth + 5), "device": {"name": "x"}}))
    assert error_code(in_strings) != "json_too_deep"
    assert error_code(_post_json(anonymous, "/api/v1/devices", '{"username": ')) == "malformed_json"


# A partial connect -----------------------------------------------------------

@pytest.mark.django_db
def test_patching_me_with_an_empty_connect_is_400_not_500(tablet_api):
    response = tablet_api.patch("/api/v1/devices/me", {"connect": {}}, format="json")
    assert response.status_code == 400, response.content
    assert error_code(response) == "invalid_input"
    assert set(response.json()["error"]["fields"]) == {"connect.type", "connect.address"}
    half = tablet_api.patch("/api/v1/devices/me", {"connect": {"type": "client"}}, format="json")
    assert half.status_code == 400 and set(half.json()["error"]["fields"]) == {"connect.address"}


# Django's own errors under /api/ ---------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("debug", [False, True])
def test_errors_django_answers_itself_under_api_are_in_the_envelope(settings, tablet, debug):
    settings.DEBUG = debug
    # A Host outside ALLOWED_HOSTS: Django's 400 (with DEBUG, its debug page).
    bad_host = APIClient().get("/api/v1/devices", HTTP_HOST="evil.example")
    assert bad_host.status_code == 400 and bad_host["Content-Type"] == "application/json"
    assert error_code(bad_host) == "bad_request"
    assert bad_host["X-Content-Type-Options"] == "nosniff"  # the security headers stay
    # A POST without a CSRF token to the JSON views that are not DRF's: what they are, not a 403 page.
    browser = APIClient(enforce_csrf_checks=True)
    missing = browser.post("/api/v1/no-such-thing", {}, format="json")
    assert missing.status_code == 404 and error_code(missing) == "not_found"
    # A body over the limit under a server that does not refuse it first (here WSGI).
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    big = _post_json(APIClient(), "/api/v1/accounts", json.dumps({"username": "x" * 5000, "password": "y"}))
    assert big.status_code == 413 and error_code(big) == "request_too_large"


def test_a_request_django_cannot_even_build_under_api_is_the_envelope():
    """A query string that is not UTF-8 (an ASGI server may pass raw bytes): Django answers
    400 before any middleware runs."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/api/v1/devices", "raw_path": b"/api/v1/devices", "query_string": b"state=\xff",
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
             "headers": [(b"host", b"127.0.0.1:8000")]}

    async def exchange():
        communicator = ApplicationCommunicator(OneTripHandler(threads=1, name="inputs"), scope)
        await communicator.send_input({"type": "http.request", "body": b""})
        start = await communicator.receive_output(5)
        body = await communicator.receive_output(5)
        await communicator.wait(5)
        return start["status"], body["body"]

    status, body = async_to_sync(exchange)()
    assert status == 400
    assert _api_envelope(body) == "bad_request"


# Body size on a running server ------------------------------------------------

def _connect(running):
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=10)
    sock.settimeout(10)
    return sock


def _read_response(sock) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 response with a Content-Length (status, headers, body); a timeout
    (socket.timeout) if the server does not answer."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the response body"
        body += chunk
    return status, headers, body


def _api_envelope(body: bytes) -> str:
    parsed = json.loads(body)
    assert set(parsed) == {"error"} and set(parsed["error"]) == {"code", "message", "fields"}, parsed
    return parsed["error"]["code"]


def _chunked_over_the_limit(running, path: str) -> tuple[int, dict, bytes]:
    """POST a chunked body to `path`, a little more than the limit, and never end it
    (no last chunk): the answer must come anyway, before the server read it all."""
    with _connect(running) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" % path.encode())
        chunk, sent = b"[" * 65536, 0
        while sent <= LIMIT:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        return _read_response(sock)


@pytest.mark.e2e
def test_a_chunked_body_over_the_limit_is_refused_413_before_it_ends(server):
    status, headers, body = _chunked_over_the_limit(server, "/api/v1/accounts")
    assert status == 413
    assert headers["connection"] == "close"
    assert _api_envelope(body) == "request_too_large"
    # Static files are served by Django's own handler, behind the same limit.
    status, headers, body = _chunked_over_the_limit(server, "/static/callpull/web/app.js")
    assert status == 413 and headers["content-type"].startswith("text/plain") and b"larger than" in body
    # A declared Content-Length over the limit is refused before any of the body is sent.
    with _connect(server) as sock:
        sock.sendall(b"POST /telephony/twilio/voice HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 300000000\r\n\r\n")
        status, headers, body = _read_response(sock)
    assert status == 413 and headers["content-type"].startswith("text/plain") and b"larger than" in body


@pytest.mark.e2e
def test_a_3_mb_json_body_is_a_413_in_the_envelope(server):
    body = json.dumps({"username": unique("big"), "password": PASSWORD, "padding": "x" * 3_000_000})
    response = httpx.post(server.base_url + "/api/v1/accounts", content=body.encode(), timeout=30, trust_env=False,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert http_error_code(response) == "request_too_large"


@pytest.mark.e2e
def test_a_chunked_body_within_the_limit_is_read_like_any_other(server):
    username = unique("chunked")
    body = json.dumps({"username": username, "password": PASSWORD}).encode()

    def chunks():
        yield body[:10]
        yield body[10:]

    response = httpx.post(server.base_url + "/api/v1/accounts", content=chunks(), timeout=10, trust_env=False,
                          headers={"Content-Type": "application/json"})
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 201, response.text
    assert response.json()["username"] == username


# Webhooks ---------------------------------------------------------------------

def _log_since(running, offset: int) -> list[str]:
    with open(running.log_path, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace").splitlines()


@pytest.mark.e2e
@pytest.mark.parametrize("what, body, status", [
    ("oversized", b"Digits=" + b"1" * 3_000_000, 413),
    ("too many fields", b"&".join(b"f%d=1" % index for index in range(5000)), 400),
])
def test_a_bad_webhook_post_is_one_warning_line_and_no_error(server, what, body, status):
    offset = server.log_path.stat().st_size
    response = call(server, "POST", "/telephony/twilio/voice", content=body,
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == status, (what, response.text[:200])

    # The server logs before it answers; the access log line (uvicorn's) aside, one line.
    lines = _log_since(server, offset)
    about_it = [line for line in lines if "/telephony/twilio/voice" in line and not line.startswith("INFO:")]
    assert len(about_it) == 1, lines
    assert " WARNING " in about_it[0], about_it
    assert not [line for line in lines if "ERROR" in line or "Traceback" in line], lines
