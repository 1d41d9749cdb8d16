"""simulators.fcm.FakeFCM refuses what FCM HTTP v1 refuses, with FCM's error JSON.

Raw HTTP (urllib), no sender: the requests are written by hand so that each one is wrong
in exactly one way."""

import json
import urllib.error
import urllib.parse
import urllib.request

import pytest

from simulators.fcm import FAILURES, FakeFCM

FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


@pytest.fixture(scope="module")
def server():
    with FakeFCM() as fake:
        yield fake


@pytest.fixture
def fake(server):
    server.reset()
    return server


@pytest.fixture(scope="module")
def bearer(server):
    """An access token the fake issued (its OAuth2 JWT-bearer grant)."""
    form = urllib.parse.urlencode({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                                   "assertion": "signed.jwt.here"}).encode()
    with urllib.request.urlopen(urllib.request.Request(server.token_uri, data=form), timeout=5) as response:
        return json.loads(response.read())["access_token"]


def post(fake, body, *, bearer=None, content_type="application/json; charset=UTF-8", project=None, path=None,
         raw=None):
    """(status, headers, parsed JSON or raw bytes) of a send request."""
    url = fake.url + (path or f"/v1/projects/{project or fake.project_id}/messages:send")
    headers = {"Content-Type": content_type}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as refused:
        content = refused.read()
        if refused.headers.get("content-type", "").startswith("application/json"):
            return refused.code, refused.headers, json.loads(content)
        return refused.code, refused.headers, content


def message(**overrides):
    base = {"token": "token-aaaaaaaaaaaa", "data": {"type": "call.ringing", "call_id": "call-1"},
            "android": {"priority": "high", "ttl": "30s", "collapse_key": "call-1"}}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def android(**overrides):
    return message(android={**message()["android"], **overrides})


def assert_fcm_error(answer, code, status, error_code=None, field=None):
    """FCM's documented error shape: {"error": {"code", "message", "status", "details"}}."""
    error = answer["error"]
    assert (error["code"], error["status"]) == (code, status)
    assert isinstance(error["message"], str) and error["message"]
    details = error.get("details", [])
    assert [d.get("errorCode") for d in details if d["@type"] == FCM_ERROR] == ([error_code] if error_code else [])
    if field is not None:
        [bad_request] = [d for d in details if d["@type"] == BAD_REQUEST]
        assert [v["field"] for v in bad_request["fieldViolations"]] == [field]


# --- what FCM accepts ------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    {"message": message()},
    {"message": message(android=None)},
    {"message": android(priority="HIGH", ttl="0.5s")},
    {"message": message(android={"priority": "normal", "collapseKey": "call-1"})},  # lowerCamelCase too
    {"message": message(data={"k": "x" * 4095})},  # 4096 bytes of keys and values: the limit
    {"message": message(token=None, topic="news")},
    {"message": message(), "validate_only": True},
])
def test_a_v1_message_is_accepted(fake, bearer, body):
    status, _, answer = post(fake, body, bearer=bearer)

    assert status == 200
    assert answer["name"].startswith(f"projects/{fake.project_id}/messages/")


# --- what FCM refuses --------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [None, "forged", "Basic dXNlcjpwYXNz"])
def test_a_request_without_a_bearer_token_the_fake_issued_is_401(fake, auth):
    status, _, answer = post(fake, {"message": message()}, bearer=auth)

    assert status == 401
    assert_fcm_error(answer, 401, "UNAUTHENTICATED")
    assert fake.messages() == []


def test_a_request_for_another_project_is_403(fake, bearer):
    status, _, answer = post(fake, {"message": message()}, bearer=bearer, project="someone-else")

    assert status == 403
    assert_fcm_error(answer, 403, "PERMISSION_DENIED")


@pytest.mark.parametrize(("content_type", "raw"), [
    ("text/plain", None),
    ("application/x-www-form-urlencoded", None),
    ("application/json", b'{"message": {"token": "t"'),  # not JSON
    ("application/json", b'["message"]'),
])
def test_a_body_that_is_not_a_json_object_is_400(fake, bearer, content_type, raw):
    status, _, answer = post(fake, {"message": message()}, bearer=bearer, content_type=content_type, raw=raw)

    assert status == 400
    assert_fcm_error(answer, 400, "INVALID_ARGUMENT", field="")
    assert fake.messages() == []


@pytest.mark.parametrize(("body", "field"), [
    ({"message": message(), "dry_run": True}, ""),
    ({}, "message"),
    ({"message": "token-aaaaaaaaaaaa"}, "message"),
    ({"message": message(registration_ids=["a", "b"])}, "message"),  # the legacy API's field
    ({"message": message(token=123)}, "message.token"),
    ({"message": message(data=["type", "call.ringing"])}, "message.data"),
    ({"message": message(data={"type": "call.ringing", "attempt": 1})}, "message.data[1].value"),
    ({"message": message(data={"type": None})}, "message.data[0].value"),
    ({"message": message(android="high")}, "message.android"),
    ({"message": android(time_to_live=30)}, "message.android"),
    ({"message": android(priority="urgent")}, "message.android.priority"),
    ({"message": android(ttl=30)}, "message.android.ttl"),
    ({"message": android(ttl="30")}, "message.android.ttl"),
    ({"message": android(ttl="-1s")}, "message.android.ttl"),
    ({"message": android(ttl="1m")}, "message.android.ttl"),
    ({"message": android(collapse_key=7)}, "message.android.collapse_key"),
])
def test_a_body_not_matching_the_v1_schema_is_400_with_the_field(fake, bearer, body, field):
    status, _, answer = post(fake, body, bearer=bearer)

    assert status == 400
    assert_fcm_error(answer, 400, "INVALID_ARGUMENT", field=field)
    assert fake.messages() == []


@pytest.mark.parametrize(("msg", "field"), [
    (message(token=None), "message"),
    (message(topic="news"), "message"),
    (message(token=""), "message.token"),
    (message(data={"from": "+15551234567"}), "message.data"),
    (message(data={"gcm": "x"}), "message.data"),
    (message(data={"gcm.notification.title": "x"}), "message.data"),
    (message(data={"google.sent_time": "1"}), "message.data"),
    (message(data={"googleAnalytics": "1"}), "message.data"),
    (message(data={"k": "x" * 4096}), "message"),  # 4097 bytes
    (message(data={"k": "é" * 2048}), "message"),  # 4097 bytes in UTF-8, 2049 characters
    (android(ttl="2419201s"), "message.android.ttl"),  # over 4 weeks
])
def test_a_message_fcm_cannot_send_is_400_invalid_argument(fake, bearer, msg, field):
    status, _, answer = post(fake, {"message": msg}, bearer=bearer)

    assert status == 400
    assert_fcm_error(answer, 400, "INVALID_ARGUMENT", error_code="INVALID_ARGUMENT", field=field)
    assert fake.messages() == []


def test_an_empty_token_is_said_to_be_an_invalid_registration_token(fake, bearer):
    _, _, answer = post(fake, {"message": message(token="")}, bearer=bearer)

    assert "registration token" in answer["error"]["message"]


def test_a_path_fcm_does_not_serve_is_googles_html_404(fake, bearer):
    status, headers, content = post(fake, {"message": message()}, bearer=bearer, path="/v1/messages:send")

    assert status == 404
    assert headers["content-type"].startswith("text/html")
    assert b"404" in content


# --- scripted failures ---------------------------------------------------------------------------------


EXPECTED = {
    "unregistered": (404, "NOT_FOUND", "UNREGISTERED"),
    "invalid_token": (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
    "sender_id_mismatch": (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"),
    "invalid_argument": (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
    "third_party_auth": (401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR"),
    "quota_exceeded": (429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
    "internal": (500, "INTERNAL", "INTERNAL"),
    "unavailable": (503, "UNAVAILABLE", "UNAVAILABLE"),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_a_scripted_failure_answers_fcms_status_and_error_code(fake, bearer, kind):
    fake.fail(kind, times=1)

    status, headers, answer = post(fake, {"message": message()}, bearer=bearer)

    code, rpc_status, error_code = EXPECTED[kind]
    assert status == code
    assert_fcm_error(answer, code, rpc_status, error_code=error_code)
    assert "Retry-After" not in headers
    assert post(fake, {"message": message()}, bearer=bearer)[0] == 200  # times=1: used up


def test_every_failure_kind_but_the_hang_is_covered():
    assert set(FAILURES) - set(EXPECTED) == {"timeout"}


@pytest.mark.parametrize("kind", ["quota_exceeded", "unavailable", "internal"])
def test_retry_after_is_sent_with_the_failures_fcm_sends_it_with(fake, bearer, kind):
    fake.fail(kind, times=1, retry_after=3)

    status, headers, _ = post(fake, {"message": message()}, bearer=bearer)

    assert status == EXPECTED[kind][0] and headers["Retry-After"] == "3"


def test_refused_requests_are_recorded_with_their_status(fake, bearer):
    post(fake, {"message": message(data={"attempt": 1})}, bearer=bearer)
    post(fake, {"message": message(token="token-bbbbbbbbbbbb")}, bearer=bearer)

    assert [(r.token, r.status, r.error) for r in fake.requests()] == [
        ("token-aaaaaaaaaaaa", 400, "INVALID_ARGUMENT"), ("token-bbbbbbbbbbbb", 200, None)]
    assert [r.token for r in fake.messages()] == ["token-bbbbbbbbbbbb"]
