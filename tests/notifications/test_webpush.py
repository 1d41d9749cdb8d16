"""notifications.webpush against the local push service (simulators.webpush) in this process:
what a browser's push service receives (RFC 8030 headers, RFC 8291 encryption it decrypts,
RFC 8292 VAPID), the retry and drop rules, the breaker, the VAPID key, and the fan-out's
Web Push deliveries."""

import base64
import time
import uuid
from datetime import timedelta

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.utils import timezone
from rest_framework.test import APIClient

from devices.models import Device
from notifications import fanout, metrics, push_results, webpush
from notifications.models import Delivery, Transport
from simulators.webpush import FakeWebPush
from tests.conftest import make_device, make_user
from tests.notifications.conftest import Results, wait_until


@pytest.fixture(scope="session")
def push_service():
    server = FakeWebPush().start()
    yield server
    server.stop()


@pytest.fixture
def local(push_service, settings, tmp_path):
    """The local push service, reset; settings with a VAPID key of this test's own (generated)
    and the service on the allow-list; a fresh sender after the test."""
    push_service.reset()
    settings.WEBPUSH_ENABLED = True
    settings.VAPID_PRIVATE_KEY_FILE = str(tmp_path / "vapid.pem")
    settings.VAPID_KEY_GENERATED = True
    settings.VAPID_SUBJECT = "mailto:ops@callpull.example"
    settings.WEBPUSH_HTTP_TIMEOUT_SECONDS = 1.0
    settings.WEBPUSH_PUSH_SERVICES = [f"127.0.0.1:{push_service.port}"]
    webpush.start()
    yield push_service
    webpush.shutdown()
    push_service.reset()


def push(subscription, *, deadline=5.0, call_id=None, event="call.ringing", urgency="high"):
    call_id = call_id or str(uuid.uuid4())
    return webpush.Push(device_id="device-1", subscription=subscription,
                        payload={"type": event, "call_id": call_id, "caller": "+15550001111"},
                        collapse_key=call_id, deadline=time.time() + deadline, urgency=urgency)


def send(pushes, timeout=10.0):
    results = Results()
    webpush.send_many(pushes, results)
    return results.wait(len(pushes), timeout)


def test_the_push_service_gets_an_encrypted_message_with_ttl_urgency_topic_and_vapid(local):
    subscription = local.subscribe()
    call_id = str(uuid.uuid4())
    sent_at = time.time()

    [result] = send([push(subscription, deadline=20.0, call_id=call_id)])

    assert (result.ok, result.error, result.attempts, result.drop_token) == (True, None, 1, False)
    [message] = local.messages(subscription["id"])
    # Decrypted by the service with the subscription's private key and auth secret (RFC 8291).
    assert message["payload"] == {"type": "call.ringing", "call_id": call_id, "caller": "+15550001111"}
    assert 17 <= message["ttl"] <= 20                           # seconds left in the ring window
    assert message["urgency"] == "high"
    assert message["topic"] == base64.urlsafe_b64encode(uuid.UUID(call_id).bytes).rstrip(b"=").decode()
    assert len(message["topic"]) <= 32
    vapid = message["vapid"]
    assert vapid["aud"] == local.url and vapid["sub"] == "mailto:ops@callpull.example"
    assert sent_at < vapid["exp"] <= sent_at + 24 * 3600
    assert vapid["k"] == webpush.vapid_public_key()
    assert result.message_id.startswith(local.url)               # the service's Location


def test_ttl_is_zero_not_negative_at_the_end_of_the_window_and_other_events_are_normal_urgency(local):
    subscription = local.subscribe()
    [result] = send([push(subscription, deadline=0.5, event="call.ended", urgency="normal")])
    assert result.ok
    [message] = local.messages(subscription["id"])
    assert message["ttl"] == 0 and message["urgency"] == "normal"


def test_a_later_message_of_the_same_call_replaces_the_undelivered_one_by_topic(local):
    subscription = local.subscribe()
    call_id = str(uuid.uuid4())
    send([push(subscription, call_id=call_id)])
    send([push(subscription, call_id=call_id, event="call.answered_elsewhere", urgency="normal")])
    ringing, answered = local.messages(subscription["id"])
    assert ringing["topic"] == answered["topic"] and (ringing["replaced"], answered["replaced"]) == (True, False)
    assert answered["payload"]["type"] == "call.answered_elsewhere"


@pytest.mark.parametrize("status, error", [(410, "gone"), (404, "not_found")])
def test_gone_and_not_found_drop_the_subscription_after_one_request(local, status, error):
    subscription = local.subscribe()
    local.fail(status, subscription["id"])

    [result] = send([push(subscription)])

    assert (result.ok, result.error, result.drop_token, result.attempts) == (False, error, True, 1)
    assert len(local.requests(subscription["id"])) == 1


def test_a_deleted_subscription_is_410_from_the_service_itself(local):
    subscription = local.subscribe()
    local.delete(subscription["id"])
    [result] = send([push(subscription)])
    assert (result.error, result.drop_token) == ("gone", True)


@pytest.mark.parametrize("status, error", [(413, "too_large"), (400, "bad_request")])
def test_too_large_and_bad_request_are_not_retried_and_keep_the_subscription(local, status, error):
    subscription = local.subscribe()
    local.fail(status, subscription["id"])

    [result] = send([push(subscription)])

    assert (result.ok, result.error, result.drop_token, result.attempts) == (False, error, False, 1)


def test_a_redirect_is_not_followed(local):
    subscription = local.subscribe()
    local.fail(307, subscription["id"])

    [result] = send([push(subscription)])

    assert (result.ok, result.error, result.attempts) == (False, "http_307", 1)
    assert [r["status"] for r in local.requests(subscription["id"])] == [307]


def test_a_subscription_whose_push_service_left_the_allow_list_is_not_pushed(local, settings):
    device = type("Device", (), {"pk": "d1", "webpush_subscription": local.subscribe()})()
    data = {"type": "call.ringing", "id": "e1"}
    assert len(webpush.pushes_for("call.ringing", [device], data=data, collapse_key="c", deadline=0)) == 1
    settings.WEBPUSH_PUSH_SERVICES = ["fcm.googleapis.com"]
    assert webpush.pushes_for("call.ringing", [device], data=data, collapse_key="c", deadline=0) == []


def test_5xx_is_retried_within_the_ring_window(local):
    subscription = local.subscribe()
    local.fail(503, subscription["id"], times=2)

    [result] = send([push(subscription)])

    assert result.ok and result.attempts == 3
    assert [r["status"] for r in local.requests(subscription["id"])] == [503, 503, 201]


def test_429_is_retried_after_retry_after(local):
    subscription = local.subscribe()
    local.fail(429, subscription["id"], times=1, retry_after=0.5)

    [result] = send([push(subscription)])

    assert result.ok and result.attempts == 2
    first, second = local.requests(subscription["id"])
    assert second["received_at"] - first["received_at"] >= 0.45


def test_a_push_service_down_gives_up_at_the_deadline_not_after(local):
    subscription = local.subscribe()
    local.fail(500, subscription["id"])

    [result] = send([push(subscription, deadline=0.6)])

    assert (result.ok, result.drop_token) == (False, False) and result.error == "internal"
    assert result.attempts >= 2


def test_the_breaker_opens_when_several_subscriptions_fail_in_a_row_and_holds_the_rest(local, monkeypatch):
    monkeypatch.setattr(webpush, "BREAKER_OPEN_SECONDS", 5.0)
    local.fail(503)
    send([push(local.subscribe(), deadline=0.3) for _ in range(webpush.BREAKER_THRESHOLD)])
    held = local.subscribe()

    [result] = send([push(held, deadline=0.3)])

    assert (result.ok, result.attempts) == (False, 0)
    assert local.requests(held["id"]) == []


def test_the_service_refuses_a_request_without_vapid_or_ttl(local):
    """The local service refuses as real ones do (so the sender's headers are proven by the
    acceptance above, not by a lenient fake)."""
    subscription = local.subscribe()
    assert httpx.post(subscription["endpoint"], content=b"x", headers={"TTL": "5"}).status_code == 401
    good = webpush.Sender(webpush.Config.from_settings())
    try:
        headers = good.headers(push(subscription))
    finally:
        good.close(1.0)
    assert httpx.post(subscription["endpoint"], content=b"x", headers=headers).status_code == 400  # no TTL
    assert httpx.post(subscription["endpoint"], content=b"x",
                      headers={**headers, "TTL": "5", "Content-Encoding": "aesgcm"}).status_code == 415
    assert httpx.post(subscription["endpoint"], content=b"x" * 4097,
                      headers={**headers, "TTL": "5", "Content-Encoding": "aes128gcm"}).status_code == 413
    assert httpx.post(subscription["endpoint"], content=b"x",
                      headers={**headers, "TTL": "5", "Content-Encoding": "aes128gcm",
                               "Urgency": "urgent"}).status_code == 400
    assert httpx.post(subscription["endpoint"], content=b"x",
                      headers={**headers, "TTL": "5", "Content-Encoding": "aes128gcm",
                               "Topic": "x" * 33}).status_code == 400
    stranger = webpush.Signer(ec.generate_private_key(ec.SECP256R1()), "mailto:x@example.com")
    wrong_audience = stranger.authorization("https://push.example.com/x")
    assert httpx.post(subscription["endpoint"], content=b"x",
                      headers={"Authorization": wrong_audience, "TTL": "5"}).status_code == 401


# --- the VAPID key -----------------------------------------------------------------------------

def test_a_generated_key_is_written_once_and_kept(tmp_path):
    path = tmp_path / "state" / "db.sqlite3.vapid.pem"
    first = webpush.load_private_key(str(path), generate=True)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = webpush.load_private_key(str(path), generate=True)
    assert webpush.public_key_b64(first) == webpush.public_key_b64(again)
    assert len(base64.urlsafe_b64decode(webpush.public_key_b64(first) + "=")) == 65


def test_a_configured_key_is_read_not_generated_and_must_be_p256(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "vapid.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    assert webpush.public_key_b64(webpush.load_private_key(str(path))) == webpush.public_key_b64(key)
    with pytest.raises(FileNotFoundError):
        webpush.load_private_key(str(tmp_path / "missing.pem"))
    other = tmp_path / "p384.pem"
    other.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(ValueError):
        webpush.load_private_key(str(other))


def test_vapid_tokens_are_reused_per_push_service_and_replaced_before_they_expire():
    signer = webpush.Signer(ec.generate_private_key(ec.SECP256R1()), "mailto:ops@callpull.example")
    now = time.time()
    first = signer.authorization("https://fcm.googleapis.com/fcm/send/a", now)
    assert signer.authorization("https://fcm.googleapis.com/fcm/send/b", now + 60) == first
    assert signer.authorization("https://web.push.apple.com/x", now) != first
    assert signer.authorization("https://fcm.googleapis.com/fcm/send/a", now + 11.5 * 3600) != first


@pytest.mark.django_db
def test_the_public_key_endpoint_serves_the_application_server_key_or_404_when_off(local, settings):
    response = APIClient().get("/api/v1/push/vapid-public-key")
    assert response.status_code == 200
    assert response.json() == {"public_key": webpush.vapid_public_key()}
    assert len(base64.urlsafe_b64decode(response.json()["public_key"] + "=")) == 65

    settings.WEBPUSH_ENABLED = False
    settings.VAPID_PRIVATE_KEY_FILE = None
    response = APIClient().get("/api/v1/push/vapid-public-key")
    assert response.status_code == 404 and response.json()["error"]["code"] == "webpush_disabled"


# --- through the fan-out -----------------------------------------------------------------------

@pytest.fixture
def browser(db, local):
    user = make_user()
    device, _ = make_device(user, kind="web", platform="web", name="Browser")
    subscription = local.subscribe()
    Device.all_objects.filter(pk=device.pk).update(webpush_subscription={"endpoint": subscription["endpoint"],
                                                                         "keys": subscription["keys"]})
    device.refresh_from_db()
    return device, subscription


def _fan(event_type, device):
    now = timezone.now()
    call_id = uuid.uuid4()
    result = fanout.fanout(event_type=event_type, payload={}, devices=[device], ref=call_id, now=now,
                           fcm_data={"call_id": str(call_id)}, online=set(), deadline=now + timedelta(seconds=5))
    return call_id, result


@pytest.mark.django_db(transaction=True)
def test_ringing_and_answered_elsewhere_reach_a_browser_and_are_recorded_as_webpush(browser, local):
    device, subscription = browser
    accepted = []

    call_id, result = _fan("call.ringing", device)
    fanout.fanout(event_type="call.reject", payload={}, devices=[device], ref=call_id, now=timezone.now(),
                  fcm_data={"call_id": str(call_id)}, online=set(), on_fcm_accepted=accepted.append)

    assert result.webpush == [str(device.pk)] and result.pushed
    wait_until(lambda: Delivery.objects.filter(ref=call_id, transport=Transport.WEBPUSH,
                                               sent_at__isnull=False).exists())
    assert fanout.any_receipt(ref=call_id, event_type="call.ringing")
    [message] = local.messages(subscription["id"])
    assert message["payload"]["type"] == "call.ringing" and message["payload"]["call_id"] == str(call_id)
    assert message["payload"]["id"] == result.event_id
    assert not Delivery.objects.filter(ref=call_id, event_type="call.reject", transport=Transport.WEBPUSH).exists()
    assert fanout.pushable("call.ringing", [device]) and not fanout.pushable("pull.requested", [device])


@pytest.mark.django_db(transaction=True)
def test_a_410_drops_the_subscription_and_the_delivery_says_so(browser, local):
    device, subscription = browser
    local.fail(410, subscription["id"])

    call_id, _ = _fan("call.ringing", device)

    assert push_results.RECORDER.flush(5.0)
    wait_until(lambda: Delivery.objects.filter(ref=call_id, transport=Transport.WEBPUSH, error="gone").exists())
    wait_until(lambda: Device.all_objects.get(pk=device.pk).webpush_subscription is None)
    _, again = _fan("call.ringing", Device.all_objects.get(pk=device.pk))
    assert again.webpush == [] and len(local.requests(subscription["id"])) == 1


@pytest.mark.django_db(transaction=True)
def test_webpush_outcomes_are_counted_in_metrics(browser, local):
    device, subscription = browser

    def accepted():
        return metrics.REGISTRY.get_sample_value("callpull_pushes_total",
                                                 {"transport": "webpush", "outcome": "accepted"}) or 0

    before = accepted()
    _fan("call.ringing", device)
    assert push_results.RECORDER.flush(5.0)
    wait_until(lambda: accepted() == before + 1)
