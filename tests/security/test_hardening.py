"""Production hardening: the deploy checklist, the page's security headers, no
secret in the logs, and webhook signatures over PUBLIC_BASE_URL behind a proxy."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rest_framework.test import APIClient
from twilio.request_validator import RequestValidator

from tests.callpull.conftest import forward, join_leg, report, signed_post
from tests.conftest import PASSWORD, client_for

ROOT = Path(__file__).resolve().parents[2]

PRODUCTION_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": "k7Qv2sPz9LmX4cW8bN1rT6yH3jF0aD5gE2uI9oK7pS4qR1vZ8xC6nM3bV0lJ5hG2",
    "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
    "TWILIO_AUTH_TOKEN": "prod-auth-token-xyz",
    "ALLOWED_HOSTS": "callpull.example.com",
    "PUBLIC_BASE_URL": "https://callpull.example.com",
}


def _manage(*args, extra_env=None):
    env = {key: value for key, value in os.environ.items()
           if key not in ("DATABASE_URL", "REDIS_URL") and not key.startswith(("SECURE_", "DJANGO_"))}
    env.update(PRODUCTION_ENV, **(extra_env or {}))
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def test_check_deploy_is_clean_with_production_settings():
    result = _manage("check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout, result.stdout


def test_production_defaults_follow_an_https_public_url():
    code = ("from django.conf import settings as s; print(s.SECURE_HSTS_SECONDS, s.SECURE_SSL_REDIRECT, "
            "s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, getattr(s, 'SECURE_PROXY_SSL_HEADER', None))")
    assert _manage("shell", "-v", "0", "-c", code).stdout.split() == ["31536000", "True", "True", "True", "None"]
    behind_proxy = _manage("shell", "-v", "0", "-c", code, extra_env={"SECURE_PROXY_SSL_HEADER": "true"})
    assert behind_proxy.stdout.strip().endswith("('HTTP_X_FORWARDED_PROTO', 'https')"), behind_proxy.stdout
    plain_http = _manage("shell", "-v", "0", "-c", code, extra_env={"PUBLIC_BASE_URL": "http://127.0.0.1:8000",
                                                          "ALLOWED_HOSTS": "127.0.0.1"})
    assert plain_http.stdout.split() == ["0", "False", "False", "False", "None"], plain_http.stdout


@pytest.mark.django_db
def test_the_web_page_sends_security_headers(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"
    csp = response["Content-Security-Policy"]
    assert "default-src" in csp and "'unsafe-eval'" not in csp
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"


@pytest.mark.django_db
def test_no_password_token_code_ticket_or_pin_reaches_the_logs(caplog, settings, line, handset_api, tablet,
                                                               tablet_api, online, fake_provider):
    settings.ALLOW_SIGNUP = True
    password, pin = "Zebra-Quartz-Lantern-58", "86420975"
    secrets = {"password": password, "pin": pin, "twilio": settings.TWILIO_AUTH_TOKEN}
    with caplog.at_level(logging.DEBUG):
        anon = APIClient()
        assert anon.post("/api/v1/accounts", {"username": "zoe", "password": password},
                         format="json").status_code == 201
        wrong = anon.post("/api/v1/devices", {"username": "zoe", "password": password + "x",
                                              "device": {"name": "P", "kind": "handset", "platform": "android"}},
                          format="json")
        assert wrong.status_code in (400, 401)
        registered = anon.post("/api/v1/devices", {"username": "zoe", "password": password,
                                                   "device": {"name": "P", "kind": "handset",
                                                              "platform": "android", "fcm_token": "fcm-SECRET-1"}},
                               format="json")
        assert registered.status_code == 201
        secrets["token"] = registered.json()["token"]
        secrets["fcm"] = "fcm-SECRET-1"
        zoe = client_for(secrets["token"])
        secrets["code"] = zoe.post("/api/v1/pairing-codes", {}, format="json").json()["code"]
        paired = anon.post("/api/v1/devices", {"pairing_code": secrets["code"],
                                               "device": {"name": "T", "kind": "tablet", "platform": "web"}},
                           format="json")
        assert paired.status_code == 201
        secrets["paired_token"] = paired.json()["token"]
        secrets["ticket"] = zoe.post("/api/v1/ws-tickets", {}, format="json").json()["ticket"]
        client_for("bad-" + secrets["token"]).get("/api/v1/devices")  # a failed login logs, but not the token
        # A live call, a transfer with the PIN (wrong, then right).
        online(tablet[0])
        # A sensitive change: first with a wrong password (refused), then with the right one.
        secrets["account_password"], secrets["wrong_password"] = PASSWORD, "Wrong-Guess-Pony-17"
        assert tablet_api.patch("/api/v1/account", {"transfer_pin": pin, "password": secrets["wrong_password"]},
                                format="json").status_code == 403
        assert tablet_api.patch("/api/v1/account", {"transfer_pin": pin, "transfer_allowlist": ["+15550007777"],
                                                    "password": PASSWORD}, format="json").status_code == 200
        assert tablet_api.patch("/api/v1/account", {"transfer_allowlist": ["+15550007777", "+15550008888"],
                                                    "current_pin": pin}, format="json").status_code == 200
        call_id = report(handset_api, line).json()["call"]["id"]
        tablet_api.post(f"/api/v1/calls/{call_id}/answer")
        forward(APIClient(), sid="CA" + "9" * 32)
        join_leg(APIClient(), call_id, fake_provider)
        tablet_api.post(f"/api/v1/calls/{call_id}/transfer", {"number": "+15550007777", "pin": "00000000"},
                        format="json")
        tablet_api.post(f"/api/v1/calls/{call_id}/transfer", {"number": "+15550007777", "pin": pin}, format="json")
    logged = "\n".join(f"{record.getMessage()} {record.args!r} {getattr(record, 'request', '')!r}"
                       for record in caplog.records)
    assert len(caplog.records) > 10, "the flow should have logged something"
    for name, secret in secrets.items():
        assert secret and secret not in logged, f"the {name} appears in the logs"


@pytest.mark.django_db
def test_webhook_signatures_use_public_base_url_not_the_host_header(client, settings, line):
    """Behind a proxy the app sees an internal Host; the provider signed the public URL."""
    settings.ALLOWED_HOSTS = ["callpull-internal", *settings.ALLOWED_HOSTS]
    params = {"CallSid": "CA" + "4" * 32, "To": line.server_number.number, "From": "+15550009999",
              "CallStatus": "ringing", "Direction": "inbound", "ForwardedFrom": line.number,
              "AccountSid": "AC" + "5" * 32}
    proxied = {"HTTP_HOST": "callpull-internal", "HTTP_X_FORWARDED_PROTO": "https",
               "HTTP_X_FORWARDED_HOST": "evil.example"}
    internal_url = "http://callpull-internal/telephony/twilio/voice"
    signed_internal = RequestValidator(settings.TWILIO_AUTH_TOKEN).compute_signature(internal_url, params)
    refused = client.post("/telephony/twilio/voice", params, HTTP_X_TWILIO_SIGNATURE=signed_internal, **proxied)
    assert refused.status_code == 403
    public_url = settings.PUBLIC_BASE_URL + "/telephony/twilio/voice"
    signed_public = RequestValidator(settings.TWILIO_AUTH_TOKEN).compute_signature(public_url, params)
    accepted = client.post("/telephony/twilio/voice", params, HTTP_X_TWILIO_SIGNATURE=signed_public, **proxied)
    assert accepted.status_code == 200, accepted.content
    assert signed_post(client, "/telephony/twilio/voice", params).status_code == 200  # a retry, same SID
