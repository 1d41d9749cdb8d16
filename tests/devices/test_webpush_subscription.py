"""A browser's Web Push subscription on its device: set with PATCH on `me`, never echoed,
checked strictly (a known push service, a P-256 key, a 16-byte secret), removed with null,
with the device revoked, and by no other device."""

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.test import override_settings
from django.utils import timezone

from devices import services
from devices.models import Device
from tests.conftest import client_for, error_code, make_device

pytestmark = pytest.mark.django_db
ME = "/api/v1/devices/me"
SERVICES = ["fcm.googleapis.com", "updates.push.services.mozilla.com", "web.push.apple.com", "notify.windows.com",
            "127.0.0.1:8000"]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def p256dh() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return b64(key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))


def subscription(endpoint="https://fcm.googleapis.com/fcm/send/abc123", **keys):
    return {"endpoint": endpoint, "keys": {"p256dh": p256dh(), "auth": b64(b"0123456789abcdef"), **keys}}


@pytest.fixture
def browser(user):
    return make_device(user, kind="web", platform="web", name="Browser")


def patch_me(token, body):
    with override_settings(WEBPUSH_PUSH_SERVICES=SERVICES):
        return client_for(token).patch(ME, body, format="json")


@pytest.mark.parametrize("endpoint", [
    "https://fcm.googleapis.com/fcm/send/abc123",
    "https://updates.push.services.mozilla.com/wpush/v2/gAAAA",
    "https://web.push.apple.com/QGuQyavXutnMH",
    "https://wns2-par02p.notify.windows.com/w/?token=BQYAAA",  # a subdomain of a suffix
    "http://127.0.0.1:8000/simulator/webpush/push/abc",          # host:port entry: http allowed
])
def test_a_subscription_on_a_known_push_service_is_kept_and_never_echoed(browser, endpoint):
    device, token = browser
    sent = subscription(endpoint)

    response = patch_me(token, {"webpush_subscription": sent})

    assert response.status_code == 200, response.json()
    assert response.json()["webpush"] is True
    assert "webpush_subscription" not in response.json()
    assert sent["keys"]["auth"] not in response.content.decode()
    listed = client_for(token).get("/api/v1/devices").json()
    assert all("webpush_subscription" not in d and sent["endpoint"] not in str(d) for d in listed)
    device.refresh_from_db()
    assert device.webpush_subscription == sent


@pytest.mark.parametrize("endpoint", [
    "https://attacker.example/push",                     # not a push service: no SSRF through us
    "https://169.254.169.254/latest/meta-data",          # cloud metadata
    "https://fcm.googleapis.com.attacker.example/x",     # suffix trick
    "https://evilfcm.googleapis.com.example/x",
    "https://notfcm.googleapis.com@attacker.example/x",  # userinfo trick
    "http://fcm.googleapis.com/fcm/send/abc",            # a vendor over plain http
    "https://fcm.googleapis.com:8443/fcm/send/abc",      # another port
    "http://127.0.0.1:8001/simulator/webpush/push/abc",  # the local entry is that port only
    "http://localhost:8000/x",
    "ftp://fcm.googleapis.com/x",
    "not a url",
])
def test_an_endpoint_off_the_push_services_is_refused_so_a_stolen_token_cannot_aim_the_server(browser, endpoint):
    device, token = browser

    response = patch_me(token, {"webpush_subscription": subscription(endpoint)})

    assert response.status_code == 400
    assert error_code(response) == "invalid_input"
    assert "webpush_subscription.endpoint" in response.json()["error"]["fields"]
    device.refresh_from_db()
    assert device.webpush_subscription is None


@pytest.mark.parametrize("keys, field", [
    ({"p256dh": b64(b"\x04" + b"\x01" * 64)}, "webpush_subscription.keys.p256dh"),  # not on the curve
    ({"p256dh": b64(b"\x04" + b"\x01" * 10)}, "webpush_subscription.keys.p256dh"),  # too short
    ({"p256dh": "not base64!"}, "webpush_subscription.keys.p256dh"),
    ({"auth": b64(b"short")}, "webpush_subscription.keys.auth"),
    ({"auth": b64(b"x" * 17)}, "webpush_subscription.keys.auth"),
    ({"auth": 12}, "webpush_subscription.keys.auth"),
])
def test_keys_that_are_not_a_p256_point_and_a_16_byte_secret_are_400_with_the_field(browser, keys, field):
    device, token = browser

    response = patch_me(token, {"webpush_subscription": subscription(**keys)})

    assert response.status_code == 400
    assert field in response.json()["error"]["fields"], response.json()


def test_a_compressed_p256_point_is_refused(browser):
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    compressed = b64(key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint))
    response = patch_me(browser[1], {"webpush_subscription": subscription(p256dh=compressed)})
    assert response.status_code == 400


@pytest.mark.parametrize("body", [{"endpoint": "https://fcm.googleapis.com/x"}, {"keys": {}}, "a string", []])
def test_a_partial_subscription_is_400(browser, body):
    assert patch_me(browser[1], {"webpush_subscription": body}).status_code == 400


def test_null_removes_it_and_revoking_the_device_removes_it(browser, user):
    device, token = browser
    assert patch_me(token, {"webpush_subscription": subscription()}).status_code == 200

    response = patch_me(token, {"webpush_subscription": None})

    assert response.status_code == 200 and response.json()["webpush"] is False
    device.refresh_from_db()
    assert device.webpush_subscription is None

    assert patch_me(token, {"webpush_subscription": subscription()}).status_code == 200
    services.device_revoke(device=device, now=timezone.now())
    assert Device.all_objects.get(pk=device.pk).webpush_subscription is None


def test_another_device_cannot_set_a_browsers_subscription(browser, user):
    device, _ = browser
    _, other = make_device(user, kind="tablet", name="Tablet")
    with override_settings(WEBPUSH_PUSH_SERVICES=SERVICES):
        response = client_for(other).patch(f"/api/v1/devices/{device.pk}",
                                           {"webpush_subscription": subscription()}, format="json")
    assert response.status_code == 403 and error_code(response) == "own_device_only"
    device.refresh_from_db()
    assert device.webpush_subscription is None
