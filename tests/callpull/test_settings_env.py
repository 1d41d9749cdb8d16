"""Settings fail loudly on bad environment values."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from callpull import env


@pytest.mark.parametrize("value,expected", [("true", True), ("0", False), ("Yes", True), ("off", False)])
def test_booleans(monkeypatch, value, expected):
    monkeypatch.setenv("X_FLAG", value)
    assert env.env_bool("X_FLAG", not expected) is expected


def test_a_misspelt_boolean_stops_start_up(monkeypatch):
    monkeypatch.setenv("ALLOW_SIGNUP", "flase")
    with pytest.raises(ImproperlyConfigured, match="ALLOW_SIGNUP"):
        env.env_bool("ALLOW_SIGNUP", True)


def test_server_numbers_must_be_e164(monkeypatch):
    monkeypatch.setenv("SERVER_NUMBERS", "+15555550100, 12")
    with pytest.raises(ImproperlyConfigured, match="SERVER_NUMBERS"):
        env.env_e164_list("SERVER_NUMBERS", [])
    monkeypatch.setenv("SERVER_NUMBERS", "+1 555 555 0100,+15555550101")
    assert env.env_e164_list("SERVER_NUMBERS", []) == ["+15555550100", "+15555550101"]


def test_urls_need_a_known_scheme(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "127.0.0.1:6379")
    with pytest.raises(ImproperlyConfigured, match="REDIS_URL"):
        env.env_url("REDIS_URL", None, schemes=("redis",))


def test_numbers_below_the_minimum_are_refused(monkeypatch):
    monkeypatch.setenv("WS_TICKET_TTL_SECONDS", "0")
    with pytest.raises(ImproperlyConfigured, match="minimum"):
        env.env_int("WS_TICKET_TTL_SECONDS", 30, minimum=5)


def test_a_missing_credentials_file_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("FCM_CREDENTIALS_FILE", str(tmp_path / "nope.json"))
    with pytest.raises(ImproperlyConfigured, match="FCM_CREDENTIALS_FILE"):
        env.env_file("FCM_CREDENTIALS_FILE")


def test_settings_module_refuses_a_bad_database_url(monkeypatch):
    import importlib

    import callpull.settings as settings_module
    monkeypatch.setenv("DATABASE_URL", "mysql://root@localhost/x")
    try:
        with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
            importlib.reload(settings_module)
    finally:
        monkeypatch.undo()
        importlib.reload(settings_module)


@pytest.mark.parametrize(("heartbeat", "stale", "refused"), [("20", "20", True), ("30", "10", True),
                                                             ("1", "3", False), ("20", "60", False)])
def test_presence_rows_must_outlive_a_heartbeat(heartbeat, stale, refused):
    import os
    import subprocess
    import sys

    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "callpull.settings",
                   "PRESENCE_HEARTBEAT_SECONDS": heartbeat, "PRESENCE_STALE_SECONDS": stale}
    done = subprocess.run([sys.executable, "-c", "import callpull.settings as s; print(s.PRESENCE_STALE_SECONDS)"],
                          env=environment, capture_output=True, text=True, timeout=60, check=False)

    if refused:
        assert done.returncode != 0
        assert f"PRESENCE_STALE_SECONDS={stale} must be more than PRESENCE_HEARTBEAT_SECONDS={heartbeat}" in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == stale
