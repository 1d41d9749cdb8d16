"""notifications.fcm's transport: firebase-admin encodes, authenticates and names the
errors, aiohttp carries the requests. Real firebase-admin against the fake FCM server."""

import json
import socket
import time

import pytest

from notifications import fcm
from tests.notifications.conftest import Results, make_push, wait_until


def test_a_push_carries_the_headers_firebase_admin_sends_to_fcm(fake_fcm, send):
    [result] = send([make_push("token-headers-00")])

    assert result.ok
    [received] = fake_fcm.requests()
    assert received.headers["x-goog-api-format-version"] == "2"
    assert received.headers["x-firebase-client"].startswith("fire-admin-python/")
    assert "gl-python/" in received.headers["x-goog-api-client"]
    assert received.headers["content-type"].startswith("application/json")


def test_an_access_token_fcm_refuses_is_replaced_and_the_push_sent_again(fake_fcm, send):
    send([make_push("token-warm-0000")])
    credential = fcm._sender().credential
    credential.token = "revoked-but-not-expired"  # FCM says 401 though google-auth thinks it valid
    fake_fcm.clear_records()

    [result] = send([make_push("token-reauth-00")])

    assert result.ok and result.attempts == 2
    assert [r.status for r in fake_fcm.requests("token-reauth-00")] == [401, 200]
    assert credential.token != "revoked-but-not-expired"


def test_an_access_token_fcm_keeps_refusing_is_reported_without_a_retry_loop(fake_fcm, send, monkeypatch):
    send([make_push("token-warm-0000")])
    credential = fcm._sender().credential
    monkeypatch.setattr(credential, "refresh", lambda request: setattr(credential, "token", "still-refused"))
    credential.token = "refused"
    fake_fcm.clear_records()

    [result] = send([make_push("token-refused-0")])

    assert (result.ok, result.error, result.drop_token, result.attempts) == (False, "unknown", False, 2)
    assert [r.status for r in fake_fcm.requests()] == [401, 401]


def test_a_third_party_auth_error_is_not_taken_for_a_refused_access_token(fake_fcm, send):
    fake_fcm.fail("third_party_auth")

    [result] = send([make_push("token-apns-0000")])

    assert (result.error, result.attempts) == ("third_party_auth", 1)
    assert len(fake_fcm.requests()) == 1


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


@pytest.mark.parametrize(("environ", "url", "proxy"), [
    ({"HTTPS_PROXY": "http://proxy.invalid:3128"}, "https://fcm.googleapis.com", "http://proxy.invalid:3128"),
    ({"HTTPS_PROXY": "http://proxy.invalid:3128", "NO_PROXY": "fcm.googleapis.com"}, "https://fcm.googleapis.com",
     None),
    ({"HTTP_PROXY": "http://proxy.invalid:3128"}, "https://fcm.googleapis.com", None),
])
def test_the_proxy_is_the_one_the_environment_names_for_the_endpoint(monkeypatch, environ, url, proxy):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)

    assert fcm._proxy_for(url) == proxy


@pytest.mark.parametrize("token", ["token-plain-0000", 'token-"quoted"\\-0000', "token-é-\u2028-0000"])
def test_a_body_built_from_the_payloads_template_is_byte_for_byte_what_firebase_admin_encodes(fake_fcm, token):
    sender = fcm._sender()
    first, push = make_push("token-first-0000", call_id="call-9"), make_push(token, call_id="call-9")

    sender._body(first, 30)  # the template of this payload, collapse key and ttl
    body = sender._body(push, 30)

    assert len(sender.templates) == 1
    assert body == fcm._encode(sender.service, push, token, 30).encode()
    assert json.loads(body)["message"]["token"] == token


def test_a_payload_that_contains_the_token_mark_is_encoded_whole(fake_fcm, send):
    push = make_push("token-mark-00000", data={"type": "call.ringing", "caller": fcm._TOKEN_MARK})

    [result] = send([push])

    assert result.ok
    [received] = fake_fcm.messages()
    assert (received.token, received.message["data"]["caller"]) == ("token-mark-00000", fcm._TOKEN_MARK)
