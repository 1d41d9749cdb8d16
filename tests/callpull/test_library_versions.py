"""The libraries whose behaviour the product's code was checked against, one module
each: an upgrade fails here first, with what to re-check before changing the pin."""

import re
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHECKED = {
    "Django": ("5.2.19", "callpull/http.py: OneTripHandler against django.core.handlers.asgi.ASGIHandler and "
                         "wsgi.WSGIHandler (what they do around get_response: script prefix, request_started, "
                         "ASGIRequest and its errors, request_finished from response.close(), headers and "
                         "cookies sent); BaseHandler.load_middleware(is_async=False) and get_response"),
    "asgiref": ("3.13.0", "callpull/http.py: sync_to_async(thread_sensitive=False, executor=pool), and async_to_sync "
                          "from a pool thread still running on the server's event loop "
                          "(tests/callpull/test_http_handler.py)"),
    "twilio": ("9.13.0", "callpull/telephony/provider.py: ApiBaseHttpClient (TwilioHttpClient.request's signature; "
                         "the REST API still addressed as https://api.twilio.com/2010-04-01/...)"),
}


def pinned(name: str, path: str) -> str | None:
    match = re.search(rf"^{re.escape(name)}==(\S+)", (ROOT / path).read_text(), re.IGNORECASE | re.MULTILINE)
    return match and match.group(1)


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_the_installed_library_is_the_one_its_module_was_checked_against(name):
    checked, what = CHECKED[name]
    assert version(name) == checked, f"{name} {version(name)} is installed, the code was checked against " \
                                     f"{checked}: re-check {what}, then update CHECKED here"


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_the_pin_is_the_checked_version(name):
    checked, what = CHECKED[name]
    pins = {path: pinned(name, path) for path in ("requirements.txt", "constraints.txt")}
    assert set(pins.values()) - {None} == {checked}, f"{name} pinned {pins}, checked against {checked}: " \
                                                     f"re-check {what}, then update CHECKED here"
