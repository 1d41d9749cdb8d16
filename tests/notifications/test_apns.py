"""notifications.apns against the local APNs server (simulators.apns, HTTP/2): the headers
and topics Apple documents, the payload limit, each error's handling, the provider
token's reuse, and the delivery rows and tokens notifications.push_results keeps."""

import time
import uuid
from datetime import timedelta

import httpx
import jwt
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from notifications import apns, fanout, push_results
from notifications.models import Delivery, Transport
from simulators.apns import FakeAPNs
from tests.conftest import make_device, make_user
from tests.notifications.conftest import Results, wait_until

VOIP = "ab" * 32
ALERT = "cd" * 32


@pytest.fixture(scope="session")
def fake_apns_server(tmp_path_factory):
    server = FakeAPNs().start()
    server.write_key(tmp_path_factory.mktemp("apns") / "AuthKey.p8")
    yield server
    server.stop()


@pytest.fixture
def fake_apns(fake_apns_server, settings):
    fake_apns_server.reset()
    for name, value in fake_apns_server.settings().items():
        setattr(settings, name, value)
    settings.APNS_HTTP_TIMEOUT_SECONDS = 1.0
    yield fake_apns_server
    apns.shutdown()
    fake_apns_server.reset()


def push(token=VOIP, *, voip=True, deadline=3.0, call_id="call-1", payload=None):
    return apns.Push(device_id=str(uuid.uuid4()), token=token, voip=voip, collapse_key=call_id,
                     deadline=time.time() + deadline,
                     payload=payload if payload is not None else {"type": "call.ringing", "call_id": call_id})


def send(pushes, timeout=10.0):
    results = Results()
    apns.send_many(pushes, results)
    return results.wait(len(pushes), timeout)


def test_a_voip_push_carries_apples_headers_and_the_voip_topic(fake_apns):
    p = push(deadline=20.0)
    [result] = send([p])

    assert result.ok and result.attempts == 1 and result.message_id
    [received] = fake_apns.requests()
    assert received.headers[":path"] == f"/3/device/{VOIP}"
    assert received.headers["apns-push-type"] == "voip"
    assert received.headers["apns-topic"] == "org.callpull.app.voip"
    assert received.headers["apns-priority"] == "10"
    assert received.headers["apns-expiration"] == str(int(p.deadline))
    assert received.headers["apns-collapse-id"] == "call-1"
    assert received.payload == {"type": "call.ringing", "call_id": "call-1"}
    assert result.message_id == received.apns_id


def test_an_alert_push_goes_to_the_bundle_topic_never_voip(fake_apns):
    [result] = send([push(ALERT, voip=False, payload={"aps": {"alert": "Call ended"}})])

    assert result.ok
    [received] = fake_apns.requests()
    assert (received.headers["apns-push-type"], received.headers["apns-topic"]) == ("alert", "org.callpull.app")


def _raw(fake, token=VOIP, **headers):
    """One request to the local server, by hand, with the sender's own provider token."""
    bearer = apns._sender().token or ""
    base = {"authorization": f"bearer {bearer}", "apns-push-type": "voip", "apns-topic": "org.callpull.app.voip"}
    with httpx.Client(http1=False, http2=True) as client:
        return client.post(f"{fake.url}/3/device/{token}", content=b'{"a":1}', headers={**base, **headers})


@pytest.mark.parametrize(("headers", "status", "reason"), [
    ({"apns-topic": "org.callpull.app"}, 400, "DeviceTokenNotForTopic"),   # voip needs the .voip topic
    ({"apns-push-type": "alert"}, 400, "DeviceTokenNotForTopic"),         # an alert to the .voip topic
    ({"apns-topic": "org.other.app.voip"}, 400, "TopicDisallowed"),
    ({"apns-priority": "7"}, 400, "BadPriority"),
    ({"authorization": "bearer nonsense"}, 403, "InvalidProviderToken"),
    ({}, 200, None),
])
def test_the_server_checks_topic_against_push_type_and_answers_apples_error_json(fake_apns, headers, status, reason):
    send([push()])  # mints the sender's token
    fake_apns.reset()

    response = _raw(fake_apns, **headers)

    assert response.http_version == "HTTP/2"
    assert response.status_code == status and response.headers["apns-id"]
    assert (response.json() if status != 200 else None) == ({"reason": reason} if reason else None)


def test_a_payload_over_5120_bytes_is_refused_before_sending(fake_apns):
    with pytest.raises(ValueError, match="over the limit"):
        push(payload={"blob": "x" * 5120})
    push(payload={"blob": "x" * 5000})  # within the VoIP limit
    with pytest.raises(ValueError, match="over the limit"):
        push(ALERT, voip=False, payload={"blob": "x" * 4100})  # alerts: 4096


def test_the_provider_token_is_reused_and_signed_es256_with_the_key_id_and_team(fake_apns):
    results = send([push(f"{i:02x}" * 32) for i in range(20)])

    assert all(r.ok for r in results)
    tokens = {r.jwt for r in fake_apns.requests()}
    assert len(tokens) == 1
    [token] = tokens
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": "FAKEKEY001", "typ": "JWT"}
    claims = jwt.decode(token, fake_apns.public_key, algorithms=["ES256"])
    assert claims["iss"] == "CALLPULL01" and abs(claims["iat"] - time.time()) < 60
    assert apns._sender().tokens_minted == 1


def test_a_token_is_not_replaced_before_its_lifetime(fake_apns, monkeypatch):
    send([push()])
    sender = apns._sender()
    minted = sender.token
    monkeypatch.setattr(sender, "token_minted_at", time.time() - apns.MIN_TOKEN_AGE_SECONDS - 60)
    send([push()])
    assert sender.token == minted  # 21 minutes old: still reused
    monkeypatch.setattr(sender, "token_minted_at", time.time() - apns.TOKEN_LIFETIME_SECONDS - 1)
    send([push()])
    assert sender.token != minted and sender.tokens_minted == 2


def test_expired_provider_token_mints_a_new_one_once(fake_apns):
    send([push()])
    fake_apns.fail("ExpiredProviderToken", times=1)

    [result] = send([push()])

    assert result.ok and result.attempts == 2
    assert [r.reason for r in fake_apns.requests()] == [None, "ExpiredProviderToken", None]
    assert len({r.jwt for r in fake_apns.requests()}) == 2


def test_expired_provider_token_again_is_not_minted_again_within_20_minutes(fake_apns):
    send([push()])
    fake_apns.fail("ExpiredProviderToken")

    first = send([push()])[0]
    second = send([push()])[0]

    assert (first.ok, first.error, first.attempts) == (False, "ExpiredProviderToken", 2)
    assert (second.ok, second.error, second.attempts) == (False, "ExpiredProviderToken", 1)
    assert apns._sender().tokens_minted == 2


def test_an_old_jwt_is_refused_by_the_server_as_expired(fake_apns):
    old = jwt.encode({"iss": "CALLPULL01", "iat": int(time.time()) - 3700},
                     open(fake_apns.key_file).read(), algorithm="ES256", headers={"kid": "FAKEKEY001"})
    assert fake_apns._check_jwt(f"bearer {old}")[0] == "ExpiredProviderToken"
    assert fake_apns._check_jwt("bearer not.a.jwt")[0] == "InvalidProviderToken"
    assert fake_apns._check_jwt("")[0] == "MissingProviderToken"


@pytest.mark.parametrize("reason", ["Unregistered", "BadDeviceToken", "DeviceTokenNotForTopic"])
def test_a_dead_token_is_reported_for_dropping_without_retry(fake_apns, reason):
    fake_apns.fail(reason, token=VOIP)

    [result] = send([push()])

    assert (result.ok, result.error, result.drop_token, result.attempts) == (False, reason, True, 1)


@pytest.mark.parametrize("reason", ["TooManyRequests", "InternalServerError", "ServiceUnavailable"])
def test_429_and_5xx_are_retried_within_the_ring_window(fake_apns, reason):
    fake_apns.fail(reason, token=VOIP, times=2)

    [result] = send([push()])

    assert result.ok and result.attempts == 3


def test_retries_stop_at_the_deadline(fake_apns):
    fake_apns.fail("ServiceUnavailable", token=VOIP)

    [result] = send([push(deadline=0.6)])

    assert not result.ok and result.error == "ServiceUnavailable" and not result.drop_token
    assert 2 <= result.attempts < 10


def test_a_slow_apns_is_cut_off_at_the_deadline(fake_apns):
    fake_apns.fail("timeout", token=VOIP)

    [result] = send([push(deadline=0.5)])

    assert not result.ok and result.error == "timeout"


def test_apns_failing_for_every_token_opens_the_breaker(fake_apns):
    fake_apns.fail("ServiceUnavailable")

    results = send([push(f"{i:02x}" * 32, deadline=1.0) for i in range(10)])

    assert all(r.error == "ServiceUnavailable" for r in results)
    # Held while open: far fewer requests than 10 pushes each retrying on its own for 1 s.
    # Without it, each of 10 pushes retries 0.1, 0.2, 0.4 s apart: about 40 requests in 1 s.
    assert len(fake_apns.requests()) == sum(r.attempts for r in results) < 25
    assert apns._sender().breaker.open_until is not None


def test_one_http2_connection_carries_every_push(fake_apns):
    send([push(f"{i:02x}" * 32) for i in range(30)])

    assert len({r.headers[":authority"] for r in fake_apns.requests()}) == 1
    assert apns._sender().client is not None



def test_no_more_streams_at_once_than_max_in_flight(fake_apns, monkeypatch):
    monkeypatch.setattr(apns, "MAX_IN_FLIGHT", 4)  # read when the sender's client is built
    fake_apns.latency_ms = 20

    results = send([push(f"{i:02x}" * 32) for i in range(30)])

    assert all(r.ok for r in results) and 1 < fake_apns.peak_streams <= 4


def test_a_burst_that_finds_the_breaker_open_waits_for_its_probe_then_goes(fake_apns):
    fake_apns.fail("ServiceUnavailable", times=5)
    opened = send([push(f"{i:02x}" * 32, deadline=0.1) for i in range(5)])
    until = apns._sender().breaker.open_until
    assert until is not None and not any(r.ok for r in opened)

    results = send([push(f"{i:02x}" * 32, deadline=5.0) for i in range(10, 20)])

    assert all(r.ok and r.attempts == 1 for r in results) and apns._sender().breaker.closed
    assert min(r.received_at for r in fake_apns.requests()[5:]) >= until  # held, none sent into it


def test_pushes_still_waiting_for_apns_at_shutdown_are_reported_unknown(fake_apns):
    fake_apns.fail("timeout", token=VOIP)
    results = Results()
    apns.send_many([push(VOIP, deadline=30.0), push(ALERT, voip=False, deadline=30.0)], results)
    wait_until(lambda: len(results.results) == 1, 5.0)  # the alert is answered, the VoIP push hangs

    apns.shutdown(0.2)

    by_token = {r.push.token: r for r in results.wait(2, 5.0)}
    assert by_token[ALERT].ok and (by_token[VOIP].ok, by_token[VOIP].error) == (False, "unknown")


def test_a_burst_that_crashes_still_reports_every_push(fake_apns, monkeypatch):
    calls = []

    def headers(self, push, token):
        calls.append(push.token)
        if len(calls) == 2:
            raise RuntimeError("a bug")
        return original(self, push, token)
    original = apns.Sender._headers
    monkeypatch.setattr(apns.Sender, "_headers", headers)

    results = send([push(f"{i:02x}" * 32, deadline=5.0) for i in range(4)])

    # the one already sent is cancelled with the rest: every push has its result, none is lost
    assert [(r.ok, r.error) for r in results] == [(False, "unknown")] * 4

# --- fanout and recording -----------------------------------------------------------------------


@pytest.fixture
def ipad(db):
    device, _ = make_device(make_user(), kind="tablet", platform="ios", apns_voip_token=VOIP, apns_token=ALERT)
    return device


def _fan(event_type, device, fake_apns):
    now = timezone.now()
    call_id = uuid.uuid4()
    result = fanout.fanout(event_type=event_type, payload={}, devices=[device], ref=call_id, now=now,
                           fcm_data={"call_id": str(call_id)}, online=set(),
                           deadline=now + timedelta(seconds=5))
    assert push_results.RECORDER.flush(5.0)
    return call_id, result


@pytest.mark.django_db(transaction=True)
def test_ringing_is_a_voip_push_and_answered_elsewhere_an_alert(fake_apns, ipad):
    call_id, result = _fan("call.ringing", ipad, fake_apns)
    assert result.apns == [str(ipad.pk)]
    _fan("call.answered_elsewhere", ipad, fake_apns)

    wait_until(lambda: len(fake_apns.requests()) == 2)
    voip, alert = fake_apns.requests()
    assert (voip.token, voip.headers["apns-push-type"]) == (VOIP, "voip")
    assert voip.payload["type"] == "call.ringing" and voip.payload["call_id"] == str(call_id)
    assert (alert.token, alert.headers["apns-push-type"]) == (ALERT, "alert")
    assert alert.payload["aps"]["alert"]["title"] == "Call answered"
    wait_until(lambda: Delivery.objects.filter(transport=Transport.APNS, sent_at__isnull=False).count() == 2)


@pytest.mark.django_db(transaction=True)
def test_an_unregistered_voip_token_is_dropped_and_recorded(fake_apns, ipad):
    fake_apns.fail("Unregistered", token=VOIP)

    call_id, _ = _fan("call.ringing", ipad, fake_apns)

    wait_until(lambda: Delivery.objects.filter(ref=call_id, error="Unregistered").exists())
    # The dead token is cleared right after the outcome is written (push_results), not with it.
    wait_until(lambda: type(ipad).all_objects.filter(pk=ipad.pk, apns_voip_token="").exists())
    ipad.refresh_from_db()
    assert ipad.apns_voip_token == "" and ipad.apns_token == ALERT


@pytest.mark.django_db(transaction=True)
def test_other_events_are_not_pushed_over_apns(fake_apns, ipad):
    _, result = _fan("call.reject", ipad, fake_apns)
    assert result.apns == []
    time.sleep(0.2)
    assert fake_apns.requests() == []


def test_the_local_server_answers_410_with_a_timestamp(fake_apns):
    send([push()])
    fake_apns.fail("Unregistered", token=VOIP)

    response = _raw(fake_apns)

    assert response.status_code == 410 and response.json()["reason"] == "Unregistered"
    assert abs(response.json()["timestamp"] / 1000 - time.time()) < 60


def test_the_settings_take_all_five_apns_values_or_none(monkeypatch, tmp_path):
    import importlib

    import callpull.settings as settings_module
    key = tmp_path / "AuthKey.p8"
    key.write_text("not used")
    monkeypatch.setenv("APNS_KEY_FILE", str(key))
    monkeypatch.setenv("APNS_KEY_ID", "FAKEKEY001")
    try:
        with pytest.raises(ImproperlyConfigured, match="missing: APNS_TEAM_ID, APNS_BUNDLE_ID, APNS_ENDPOINT"):
            importlib.reload(settings_module)
        monkeypatch.setenv("APNS_TEAM_ID", "CALLPULL01")
        monkeypatch.setenv("APNS_BUNDLE_ID", "org.callpull.app")
        monkeypatch.setenv("APNS_ENDPOINT", "https://api.push.apple.com")
        assert importlib.reload(settings_module).APNS_ENDPOINT == "https://api.push.apple.com"
    finally:
        monkeypatch.undo()
        importlib.reload(settings_module)


def test_the_control_api_scripts_rules_and_lists_requests_over_http2(fake_apns):
    with httpx.Client(http1=False, http2=True) as client:
        rule = client.post(f"{fake_apns.url}/_fake/rules", json={"fail": "BadDeviceToken", "token": VOIP})
        assert rule.status_code == 201
        assert client.post(f"{fake_apns.url}/_fake/rules", json={"fail": "Nope"}).status_code == 400

        [result] = send([push()])
        assert result.error == "BadDeviceToken" and result.drop_token

        listed = client.get(f"{fake_apns.url}/_fake/requests").json()
        assert [(r["token"], r["status"], r["reason"]) for r in listed] == [(VOIP, 400, "BadDeviceToken")]
        assert client.delete(f"{fake_apns.url}/_fake").status_code == 204
    assert fake_apns.requests() == []
