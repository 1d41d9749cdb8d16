"""The vendored browser libraries (`make vendor`, Makefile): the Twilio Voice JS SDK is
committed into callpull/static/callpull/vendor/ so that neither `make test` nor the page
needs npm or a CDN. These checks keep the committed copy the one web/package.json pins:
its file name carries that version, the bundle says that version, web/package-lock.json
locks that version, and every vendored file still has the sha256 `make vendor` recorded."""

import hashlib
import json
import re
from pathlib import Path

from callpull import web

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "callpull" / "static" / "callpull" / "vendor"
PACKAGE = "@twilio/voice-sdk"


def pinned() -> str:
    version = json.loads((ROOT / "web" / "package.json").read_text())["dependencies"][PACKAGE]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{PACKAGE} is pinned to a range, not one version: {version}"
    return version


def recorded() -> dict[str, str]:
    """SHA256SUMS as `sha256sum` writes it: file name → hex digest."""
    sums = {}
    for line in (VENDOR / "SHA256SUMS").read_text().splitlines():
        digest, name = re.fullmatch(r"([0-9a-f]{64}) [ *](\S+)", line).groups()
        sums[name] = digest
    return sums


def test_the_vendored_files_are_the_ones_make_vendor_recorded():
    sums = recorded()
    version = pinned()
    assert set(sums) == {f"twilio-voice-sdk-{version}.min.js", f"twilio-voice-sdk-{version}.LICENSE.md"}
    for name, digest in sums.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, f"{name} changed since make vendor"
    # Nothing else in the folder: an old version left behind would be served too.
    assert {path.name for path in VENDOR.iterdir()} == set(sums) | {"SHA256SUMS"}


def test_the_vendored_sdk_is_the_version_package_json_pins():
    version = pinned()
    bundle = (VENDOR / f"twilio-voice-sdk-{version}.min.js").read_text()
    assert f'var PACKAGE_NAME="{PACKAGE}";var RELEASE_VERSION="{version}";' in bundle
    lock = json.loads((ROOT / "web" / "package-lock.json").read_text())
    assert lock["packages"][""]["dependencies"][PACKAGE] == version
    locked = lock["packages"][f"node_modules/{PACKAGE}"]
    assert locked["version"] == version and locked["integrity"].startswith("sha512-")
    assert locked["license"] == "Apache-2.0"
    assert "Apache License, Version 2.0" in (VENDOR / f"twilio-voice-sdk-{version}.LICENSE.md").read_text()


def test_the_page_loads_the_vendored_sdk_from_our_own_origin():
    assert web.VOICE_SDK == f"callpull/vendor/twilio-voice-sdk-{pinned()}.min.js"


def test_the_page_chooses_its_voice_client_by_whether_the_simulator_is_embedded(client, settings):
    page = client.get("/")
    assert 'data-voice="simulator"' in page.text and "twilio-voice-sdk" not in page.text
    assert "twilio.com" not in page["Content-Security-Policy"]

    settings.SIMULATOR_ENABLED = False
    page = client.get("/")
    assert 'data-voice="twilio"' in page.text
    assert f'<script src="/static/{web.VOICE_SDK}"></script>' in page.text
    connect = next(part for part in page["Content-Security-Policy"].split("; ") if part.startswith("connect-src"))
    assert "wss://*.twilio.com" in connect.split() and "https://*.twilio.com" in connect.split()
    assert "media-src https://sdk.twilio.com" in page["Content-Security-Policy"].split("; ")
