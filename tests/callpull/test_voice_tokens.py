"""Voice identities and access tokens (issue 16): a tablet, desktop or web device has a
`client` identity of its own, reached by default, and fetches Twilio Access Tokens for it
(POST /api/v1/devices/me/voice-token). The tokens are decoded here with the twilio library's
own decoder and with PyJWT, the way Twilio reads them (https://www.twilio.com/docs/iam/access-tokens)."""

import os
import re
import subprocess
import sys
import time
from datetime import datetime

import jwt
import pytest
from django.conf import settings
from django.test import override_settings
from rest_framework.test import APIClient
from twilio.jwt import JwtDecodeError
from twilio.jwt.access_token import AccessToken

from devices.models import Device
from simulators.telephony import tokens
from tests.conftest import PASSWORD, client_for, error_code, make_device, make_user, rate_limits

URL = "/api/v1/devices/me/voice-token"
CREDENTIALS = {"TWILIO_PUSH_CREDENTIAL_SID_ANDROID": "CR" + "a" * 32,
               "TWILIO_PUSH_CREDENTIAL_SID_IOS": "CR" + "b" * 32}


def issue(client):
    response = client.post(URL)
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"token", "identity", "expires_at"}
    return body


def decode(token: str) -> dict:
    """PyJWT, checking what Twilio checks: the signature with the API key secret, HS256, expiry."""
    return jwt.decode(token, settings.TWILIO_API_KEY_SECRET, algorithms=["HS256"],
                      options={"require": ["exp", "iss", "sub", "jti"]})


# Voice identities ------------------------------------------------------------------

@pytest.mark.parametrize("kind,platform", [("tablet", "android"), ("desktop", "other"), ("web", "web")])
def test_secondary_kinds_get_a_voice_identity_that_is_their_default_target(user, kind, platform):
    device, token = make_device(user, kind=kind, platform=platform, name="Kitchen tablet")
    assert re.fullmatch(r"d[0-9a-f]{32}", device.voice_identity)
    assert "kitchen" not in device.voice_identity.lower()
    body = client_for(token).get("/api/v1/devices/me").json()
    assert body["voice_identity"] == device.voice_identity
    assert body["connect"] == {"type": "client", "address": device.voice_identity, "verified": True}


def test_a_handset_has_no_voice_identity_and_no_target(handset, handset_api):
    device, _ = handset
    assert device.voice_identity is None
    body = handset_api.get("/api/v1/devices/me").json()
    assert body["voice_identity"] is None and body["connect"] is None


def test_identities_are_never_reused_even_after_revocation(user):
    first, token = make_device(user, kind="tablet", name="Same name")
    assert client_for(token).delete("/api/v1/devices/me").status_code == 204
    second, _ = make_device(user, kind="tablet", name="Same name")
    assert second.voice_identity != first.voice_identity
    identities = list(Device.all_objects.exclude(voice_identity=None).values_list("voice_identity", flat=True))
    assert len(identities) == len(set(identities)) == 2
    assert Device._meta.get_field("voice_identity").unique


def test_a_target_of_its_own_wins_and_clearing_it_returns_to_the_identity(user):
    device, token = make_device(user, kind="tablet", connect_type="sip", connect_address="sip:me@pbx.example")
    client = client_for(token)
    assert client.get("/api/v1/devices/me").json()["connect"]["address"] == "sip:me@pbx.example"
    cleared = client.patch("/api/v1/devices/me", {"connect": None}, format="json")
    assert cleared.status_code == 200, cleared.content
    assert cleared.json()["connect"] == {"type": "client", "address": device.voice_identity, "verified": True}


def test_registration_over_http_gives_the_identity(db):
    make_user("zoe")
    response = APIClient().post("/api/v1/devices", {
        "username": "zoe", "password": PASSWORD,
        "device": {"name": "Laptop", "kind": "desktop", "platform": "other"}}, format="json")
    assert response.status_code == 201, response.content
    device = response.json()["device"]
    assert re.fullmatch(r"d[0-9a-f]{32}", device["voice_identity"])
    assert device["connect"]["type"] == "client" and device["connect"]["address"] == device["voice_identity"]


# Access tokens ------------------------------------------------------------------------

@override_settings(**CREDENTIALS, VOICE_TOKEN_TTL_SECONDS=600)
def test_the_token_is_a_twilio_access_token_for_the_device(tablet, tablet_api):
    device, _ = tablet
    body = issue(tablet_api)
    assert body["identity"] == device.voice_identity

    # PyJWT: header and claims as Twilio documents them.
    header = jwt.get_unverified_header(body["token"])
    assert header == {"alg": "HS256", "typ": "JWT", "cty": "twilio-fpa;v=1"}
    claims = decode(body["token"])
    assert claims["iss"] == settings.TWILIO_API_KEY_SID and claims["iss"].startswith("SK")
    assert claims["sub"] == settings.TWILIO_ACCOUNT_SID and claims["sub"].startswith("AC")
    assert claims["jti"].startswith(settings.TWILIO_API_KEY_SID + "-")
    grants = claims["grants"]
    assert grants["identity"] == device.voice_identity
    assert grants["voice"]["incoming"] == {"allow": True}
    assert grants["voice"]["push_credential_sid"] == CREDENTIALS["TWILIO_PUSH_CREDENTIAL_SID_ANDROID"]
    assert "outgoing" not in grants["voice"]
    assert claims["exp"] - claims["nbf"] == 600
    assert datetime.fromisoformat(body["expires_at"]).timestamp() == claims["exp"]

    # The twilio library's own decoder agrees, and refuses the token under another secret.
    decoded = AccessToken.from_jwt(body["token"], settings.TWILIO_API_KEY_SECRET)
    assert decoded.issuer == settings.TWILIO_API_KEY_SID and decoded.subject == settings.TWILIO_ACCOUNT_SID
    assert decoded.payload["grants"] == grants
    with pytest.raises(JwtDecodeError):
        AccessToken.from_jwt(body["token"], "not-the-secret-" + "x" * 32)


@override_settings(**CREDENTIALS, TWILIO_TWIML_APP_SID="AP" + "c" * 32)
@pytest.mark.parametrize("kind,platform,credential", [
    ("tablet", "ios", CREDENTIALS["TWILIO_PUSH_CREDENTIAL_SID_IOS"]),
    ("desktop", "android", CREDENTIALS["TWILIO_PUSH_CREDENTIAL_SID_ANDROID"]),
    ("web", "web", None),
])
def test_the_push_credential_is_the_platforms_and_outgoing_the_twiml_app(user, kind, platform, credential):
    device, token = make_device(user, kind=kind, platform=platform)
    voice = decode(issue(client_for(token))["token"])["grants"]["voice"]
    assert voice.get("push_credential_sid") == credential
    assert voice["outgoing"] == {"application_sid": "AP" + "c" * 32}
    assert voice["incoming"] == {"allow": True}


def test_the_default_lifetime_is_an_hour(tablet_api):
    claims = decode(issue(tablet_api)["token"])
    assert settings.VOICE_TOKEN_TTL_SECONDS == 3600
    assert claims["exp"] - claims["nbf"] == 3600


def test_the_identity_is_always_the_callers_own(user, tablet, tablet_api):
    other, _ = make_device(user, kind="web", platform="web")
    response = tablet_api.post(URL, {"identity": other.voice_identity}, format="json")
    assert response.status_code == 200
    assert response.json()["identity"] == tablet[0].voice_identity
    assert decode(response.json()["token"])["grants"]["identity"] == tablet[0].voice_identity


def test_a_handset_gets_403(handset_api):
    response = handset_api.post(URL)
    assert response.status_code == 403
    assert error_code(response) == "no_voice_identity"


def test_a_revoked_device_gets_401(user, tablet, tablet_api):
    assert issue(tablet_api)["identity"] == tablet[0].voice_identity
    assert tablet_api.delete("/api/v1/devices/me").status_code == 204
    response = tablet_api.post(URL)
    assert response.status_code == 401
    assert "token" not in response.json()


def test_without_an_api_key_503(tablet_api, settings):
    settings.TWILIO_API_KEY_SID = settings.TWILIO_API_KEY_SECRET = None
    response = tablet_api.post(URL)
    assert response.status_code == 503
    assert error_code(response) == "voice_tokens_not_configured"


def test_without_authentication_401(db):
    assert APIClient().post(URL).status_code == 401


@override_settings(RATE_LIMITS=rate_limits(voice_token=(2, 3600)))
def test_rate_limited_per_device(user, tablet_api):
    issue(tablet_api)
    issue(tablet_api)
    limited = tablet_api.post(URL)
    assert limited.status_code == 429
    assert error_code(limited) == "rate_limited" and int(limited["Retry-After"]) > 0
    other = client_for(make_device(user, kind="web", platform="web")[1])
    assert issue(other)["token"]  # another device has its own budget


# Start-up checks ------------------------------------------------------------------------

def _start(**env) -> subprocess.CompletedProcess:
    """Import the settings in a fresh interpreter with these variables."""
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "callpull.settings", **env}
    return subprocess.run([sys.executable, "-c", "import callpull.settings as s; print(s.VOICE_TOKEN_TTL_SECONDS, "
                                                 "s.TWILIO_API_KEY_SID)"],
                          env=environment, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("env,message", [
    ({"VOICE_TOKEN_TTL_SECONDS": "86401"}, "VOICE_TOKEN_TTL_SECONDS"),
    ({"VOICE_TOKEN_TTL_SECONDS": "0"}, "VOICE_TOKEN_TTL_SECONDS"),
    ({"TWILIO_API_KEY_SID": "SK" + "1" * 32}, "TWILIO_API_KEY_SECRET"),
])
def test_bad_voice_settings_stop_start_up(env, message):
    started = _start(**env)
    assert started.returncode != 0
    assert "ImproperlyConfigured" in started.stderr and message in started.stderr


def test_the_embedded_default_has_a_development_api_key():
    started = _start(VOICE_TOKEN_TTL_SECONDS="86400")
    assert started.returncode == 0, started.stderr
    ttl, sid = started.stdout.split()
    assert ttl == "86400" and re.fullmatch(r"SK[0-9a-f]{32}", sid)


# The simulator checks them as Twilio does ----------------------------------------------

def _claims(identity="d" + "1" * 32, **changes) -> dict:
    now = int(time.time())
    claims = {"jti": f"{settings.TWILIO_API_KEY_SID}-{now}", "iss": settings.TWILIO_API_KEY_SID,
              "sub": settings.TWILIO_ACCOUNT_SID, "nbf": now, "exp": now + 600,
              "grants": {"identity": identity, "voice": {"incoming": {"allow": True}}}}
    return {**claims, **changes}


def _sign(claims, *, secret=None, headers=None):
    return jwt.encode(claims, secret or settings.TWILIO_API_KEY_SECRET, algorithm="HS256",
                      headers={"cty": "twilio-fpa;v=1"} if headers is None else headers)


def _verify(token, identity="d" + "1" * 32):
    return tokens.verify(token, account_sid=settings.TWILIO_ACCOUNT_SID,
                         api_keys={settings.TWILIO_API_KEY_SID: settings.TWILIO_API_KEY_SECRET}, identity=identity)


def test_the_simulator_accepts_the_products_token(tablet, tablet_api):
    body = issue(tablet_api)
    registration = _verify(body["token"], tablet[0].voice_identity)
    assert registration.identity == tablet[0].voice_identity
    assert registration.expires_at == int(datetime.fromisoformat(body["expires_at"]).timestamp())


@pytest.mark.parametrize("token,code", [
    ("garbage", tokens.INVALID),
    ("a.b.c", tokens.INVALID),
    (lambda: _sign(_claims(), headers={}), tokens.HEADER),  # no cty
    (lambda: _sign(_claims(iss="SK" + "9" * 32)), tokens.ISSUER),  # a key the account does not have
    (lambda: _sign(_claims(sub="AC" + "9" * 32)), tokens.ISSUER),  # another account
    (lambda: _sign(_claims(), secret="another-secret-" + "x" * 32), tokens.SIGNATURE),
    (lambda: _sign(_claims(exp=int(time.time()) - 1)), tokens.EXPIRED),
    (lambda: _sign(_claims(exp=int(time.time()) + 86400 + 60)), tokens.EXPIRED),  # beyond 24 hours
    (lambda: _sign({k: v for k, v in _claims().items() if k != "exp"}), tokens.EXPIRED),
    (lambda: _sign(_claims(nbf=int(time.time()) + 60)), tokens.NOT_YET_VALID),
    (lambda: _sign(_claims(grants={"identity": "d" + "1" * 32, "voice": {}})), tokens.GRANTS),  # no incoming
    (lambda: _sign(_claims(grants={"identity": "d" + "1" * 32, "video": {}})), tokens.GRANTS),
    (lambda: _sign(_claims(identity="d" + "2" * 32)), tokens.GRANTS),  # another identity
])
def test_the_simulator_refuses_bad_tokens_with_twilios_codes(token, code):
    with pytest.raises(tokens.TokenRefused) as refused:
        _verify(token() if callable(token) else token)
    assert refused.value.code == code


def test_a_valid_forged_claim_set_passes_so_the_refusals_above_are_about_one_thing_each():
    assert _verify(_sign(_claims())).identity == "d" + "1" * 32
