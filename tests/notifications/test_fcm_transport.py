"""notifications.fcm's transport: the FCM HTTP v1 request it builds, the access token it
gets from firebase-admin's public credential API, the error mapping it owns, and aiohttp
carrying the requests. Against the fake FCM server, which refuses what FCM refuses."""

import ast
import datetime
import email.utils
import json
import socket
import threading
import time
import types
from pathlib import Path

import pytest

from notifications import fcm
from tests.notifications.conftest import Results, make_push, wait_until

# --- the request --------------------------------------------------------------------------------


def test_a_push_is_a_bearer_authorized_json_post_to_the_projects_send_url(fake_fcm, send):
    [result] = send([make_push("token-headers-00")])

    assert result.ok  # the fake refuses a request without a bearer token it issued (401)
    [received] = fake_fcm.requests()
    assert received.project == fake_fcm.project_id
    assert received.headers["content-type"] == "application/json; charset=UTF-8"
    assert fcm._sender().url == f"{fake_fcm.url}/v1/projects/{fake_fcm.project_id}/messages:send"
    # firebase-admin's identity headers belong to firebase-admin's own requests, not ours.
    assert "x-firebase-client" not in received.headers


@pytest.mark.parametrize("token", ["token-plain-0000", 'token-"quoted"\\-0000', "token-é-\u2028-0000"])
def test_the_body_is_the_documented_v1_message_and_the_payload_is_encoded_once(fake_fcm, token):
    sender = fcm._sender()
    first, push = make_push("token-first-0000", call_id="call-9"), make_push(token, call_id="call-9")

    sender._body(first, 30)  # encodes this payload, collapse key and ttl
    body = sender._body(push, 30)

    assert len(sender.templates) == 1
    assert json.loads(body) == {"message": {
        "token": token,
        "data": {"type": "call.ringing", "call_id": "call-9", "caller": "+15551234567"},
        "android": {"priority": "high", "ttl": "30s", "collapse_key": "call-9"},
    }}
    assert body.isascii()


def test_a_payload_that_looks_like_json_or_a_token_is_sent_as_given(fake_fcm, send):
    data = {"type": "call.ringing", "caller": '"},"token":"evil', "note": "\x00}}"}

    [result] = send([make_push("token-quoted-000", data=data)])

    assert result.ok
    [received] = fake_fcm.messages()
    assert (received.token, received.message["data"]) == ("token-quoted-000", data)


def test_a_payload_over_fcms_size_limit_is_refused_and_the_token_kept(fake_fcm, send):
    [result] = send([make_push(data={"type": "call.ringing", "blob": "x" * 4096})])

    assert (result.ok, result.error, result.drop_token, result.attempts) == (False, "invalid_argument", False, 1)


# --- the access token ------------------------------------------------------------------------------


def _count_token_fetches(sender, monkeypatch) -> list[str]:
    """Wrap the credential's get_access_token: the names of the threads it ran on."""
    threads, original = [], sender.credential.get_access_token

    def get_access_token():
        threads.append(threading.current_thread().name)
        return original()

    monkeypatch.setattr(sender.credential, "get_access_token", get_access_token)
    return threads


def test_the_access_token_is_fetched_once_for_many_pushes_off_the_event_loop(fake_fcm, send, monkeypatch):
    sender = fcm._sender()
    sender.access_token = None  # fcm.start() fetched one; forget it
    fetches = _count_token_fetches(sender, monkeypatch)

    results = send([make_push(f"token-once-{i:05d}") for i in range(20)])

    assert all(r.ok for r in results)
    assert len(fetches) == 1 and fetches[0].startswith("fcm-auth")


def test_an_access_token_about_to_expire_is_replaced_before_it_is_used(fake_fcm, send, monkeypatch):
    sender = fcm._sender()
    send([make_push("token-warm-0000")])
    fetches = _count_token_fetches(sender, monkeypatch)
    send([make_push("token-still-000")])
    assert fetches == []  # good for an hour

    sender.token_expires_at = time.time() + fcm.TOKEN_REFRESH_MARGIN_SECONDS - 1
    [result] = send([make_push("token-renewed-0")])

    assert result.ok and result.attempts == 1 and len(fetches) == 1
    assert sender.token_expires_at > time.time() + fcm.TOKEN_REFRESH_MARGIN_SECONDS


def test_an_access_token_fcm_refuses_is_replaced_and_the_push_sent_again(fake_fcm, send):
    send([make_push("token-warm-0000")])
    sender = fcm._sender()
    sender.access_token = "revoked-but-not-expired"  # FCM says 401 though it has not expired
    fake_fcm.clear_records()

    [result] = send([make_push("token-reauth-00")])

    assert result.ok and result.attempts == 2
    assert [r.status for r in fake_fcm.requests("token-reauth-00")] == [401, 200]
    assert sender.access_token != "revoked-but-not-expired"


def test_an_access_token_fcm_keeps_refusing_is_reported_without_a_retry_loop(fake_fcm, send, monkeypatch):
    send([make_push("token-warm-0000")])
    sender = fcm._sender()
    expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    monkeypatch.setattr(sender.credential, "get_access_token",
                        lambda: types.SimpleNamespace(access_token="still-refused", expiry=expiry))
    sender.access_token = "refused"
    fake_fcm.clear_records()

    [result] = send([make_push("token-refused-0")])

    assert (result.ok, result.error, result.drop_token, result.attempts) == (False, "unknown", False, 2)
    assert [r.status for r in fake_fcm.requests()] == [401, 401]


def test_a_third_party_auth_error_is_not_taken_for_a_refused_access_token(fake_fcm, send):
    fake_fcm.fail("third_party_auth")

    [result] = send([make_push("token-apns-0000")])

    assert (result.error, result.attempts) == ("third_party_auth", 1)
    assert len(fake_fcm.requests()) == 1


# --- FCM's answers ----------------------------------------------------------------------------------

FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


def _error(code, status, message, error_code=None, violations=None):
    details = []
    if error_code:
        details.append({"@type": FCM_ERROR, "errorCode": error_code})
    if violations:
        details.append({"@type": BAD_REQUEST, "fieldViolations": [{"field": f, "description": "d"}
                                                                    for f in violations]})
    return json.dumps({"error": {"code": code, "message": message, "status": status, "details": details}}).encode()


GOOGLE_404 = b"<!DOCTYPE html><title>Error 404 (Not Found)!!1</title><p>The requested URL was not found"


@pytest.mark.parametrize(("status", "body", "retry_after", "expected"), [
    # FcmError errorCode first (the ErrorCode enum)
    (404, _error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"), None, "unregistered"),
    (403, _error(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH"), None, "sender_id_mismatch"),
    (400, _error(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token",
                 "INVALID_ARGUMENT"), None, "invalid_token"),
    (400, _error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", "INVALID_ARGUMENT",
                 ["message.token"]), None, "invalid_token"),
    (400, _error(400, "INVALID_ARGUMENT", "Message is too big", "INVALID_ARGUMENT", ["message"]), None,
     "invalid_argument"),
    (429, _error(429, "RESOURCE_EXHAUSTED", "Quota exceeded", "QUOTA_EXCEEDED"), "7", "quota_exceeded"),
    (503, _error(503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE"), None, "unavailable"),
    (500, _error(500, "INTERNAL", "Internal error encountered.", "INTERNAL"), None, "internal"),
    (401, _error(401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service", "THIRD_PARTY_AUTH_ERROR"),
     None, "third_party_auth"),
    (401, _error(401, "UNAUTHENTICATED", "APNs certificate", "APNS_AUTH_ERROR"), None, "third_party_auth"),
    # else the google.rpc status (documented example 1: a BadRequest detail only)
    (400, _error(400, "INVALID_ARGUMENT", "Invalid value at 'message.data[0].value' (TYPE_STRING), 12", None,
                 ["message.data[0].value"]), None, "invalid_argument"),
    (404, _error(404, "NOT_FOUND", "Requested entity was not found."), None, "unregistered"),
    (504, _error(504, "DEADLINE_EXCEEDED", "Deadline exceeded."), None, "timeout"),
    (403, _error(403, "PERMISSION_DENIED", "Permission denied on project p."), None, "unknown"),
    # else the HTTP status alone
    (503, b"upstream connect error", None, "unavailable"),
    (429, b"", "2", "quota_exceeded"),
    (404, GOOGLE_404, None, "unknown"),  # a wrong URL: no token dropped
    (502, b"<html>Bad Gateway</html>", None, "unknown"),
])
def test_fcm_errors_are_mapped_by_error_code_then_rpc_status_then_http_status(status, body, retry_after, expected):
    answer = fcm.classify(status, body, retry_after)

    assert answer.error == expected
    assert answer.refused_bearer is False
    assert (expected in fcm.DROP_TOKEN) == (expected in {"unregistered", "invalid_token", "sender_id_mismatch"})
    assert answer.retry_after == (float(retry_after) if retry_after else None)


@pytest.mark.parametrize("body", [_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
                                  b"", b"Unauthorized"])
def test_a_401_other_than_third_party_auth_is_fcm_refusing_the_access_token(body):
    answer = fcm.classify(401, body)

    assert (answer.error, answer.refused_bearer) == ("unknown", True)


def test_retry_after_as_an_http_date_is_seconds_from_now():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)

    answer = fcm.classify(503, _error(503, "UNAVAILABLE", "down", "UNAVAILABLE"), when)

    assert 25 <= answer.retry_after <= 30


def test_a_503_with_retry_after_is_retried_no_sooner(fake_fcm, send):
    fake_fcm.fail("unavailable", times=1, retry_after=0.6)

    [result] = send([make_push("token-later-000")])

    assert result.ok and result.attempts == 2
    first, second = fake_fcm.requests("token-later-000")
    assert first.status == 503 and second.received_at - first.received_at >= 0.6


def test_an_endpoint_that_is_not_fcm_keeps_every_token(fake_fcm, send, settings):
    settings.FCM_ENDPOINT = f"{fake_fcm.url}/not-fcm"  # Google's HTML 404 for every request

    [result] = send([make_push("token-kept-0000")])

    assert (result.ok, result.error, result.drop_token, result.attempts) == (False, "unknown", False, 1)


# --- the connections ---------------------------------------------------------------------------------


def test_an_endpoint_refusing_connections_is_unavailable_and_retried(fake_fcm, send, settings):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        settings.FCM_ENDPOINT = f"http://127.0.0.1:{probe.getsockname()[1]}"
    settings.FCM_RETRY_BUDGET_SECONDS = 0.35

    [result] = send([make_push()])

    assert (result.ok, result.error, result.drop_token) == (False, "unavailable", False)
    assert result.attempts >= 2


def test_no_more_than_max_in_flight_requests_are_open_at_once(fake_fcm, settings, monkeypatch):
    monkeypatch.setattr(fcm, "MAX_IN_FLIGHT", 2)
    settings.FCM_HTTP_TIMEOUT_SECONDS = 5.0
    fake_fcm.fail("timeout", times=2)  # the first two requests hang until released
    results = Results()

    fcm.send_many([make_push(f"token-slot-{i:05d}") for i in range(3)], results)
    wait_until(lambda: len(fake_fcm.requests()) >= 2)
    time.sleep(0.2)
    waiting = len(fake_fcm.requests())
    fake_fcm.clear_rules()  # releases the hung requests; they are retried
    results.wait(3)

    assert waiting == 2
    assert all(r.ok for r in results.results)
    assert sorted(m.token for m in fake_fcm.messages()) == [f"token-slot-{i:05d}" for i in range(3)]


# --- no private API -------------------------------------------------------------------------------

# Attributes of notifications.fcm's own objects that hold a library's objects.
LIBRARY_HELD = {"credential", "service", "session", "loop", "auth_pool", "target", "response", "info"}


def _private_uses(source: str) -> list[str]:
    """Underscore names taken from a library by notifications.fcm: imported, or read off a
    module it imported or off an object of a library it holds."""
    tree = ast.parse(source)
    imported, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            module = node.module if isinstance(node, ast.ImportFrom) else ""
            for alias in node.names:
                name = f"{module}.{alias.name}" if module else alias.name
                if any(part.startswith("_") and part != "__future__" for part in name.split(".")):
                    found.append(f"imports {name}")
                imported.add((alias.asname or alias.name).split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            while isinstance(base, ast.Attribute) and base.attr not in LIBRARY_HELD:
                base = base.value
            if (isinstance(base, ast.Name) and base.id in imported) or \
                    (isinstance(base, ast.Attribute) and base.attr in LIBRARY_HELD):
                found.append(f"{ast.unparse(node)}")
    return found


def test_the_sender_uses_no_private_api_of_any_library():
    assert _private_uses(Path(fcm.__file__).read_text()) == []


def test_the_private_api_check_sees_what_the_sender_used_to_do():
    source = ("from firebase_admin import _http_client, messaging\n"
              "service = messaging._get_messaging_service(app)\n"
              "url = self.credential._g_credential\n"
              "self._own = self._body(push, 1)\n")

    assert sorted(_private_uses(source)) == ["imports firebase_admin._http_client",
                                             "messaging._get_messaging_service", "self.credential._g_credential"]
