"""A browser's Web Push subscription, as a device stores it: checked before it is kept.

A subscription is what `PushSubscription.toJSON()` gives a page: `{endpoint, keys: {p256dh,
auth}}` (W3C Push API). The server later POSTs to `endpoint` (notifications.webpush), so a
stolen device token must not be able to point it anywhere else: the endpoint's host must be
one of WEBPUSH_PUSH_SERVICES (the browser vendors' push services), and an `http://`
endpoint is taken only for an entry that names a port (a local push service, e.g. the
embedded default's simulator); every other endpoint is `https://`.

- `p256dh`: the browser's P-256 public key, base64url, an uncompressed point (65 bytes,
  starting 0x04) (RFC 8291 §3.1; the Push API's `getKey("p256dh")`).
- `auth`: the authentication secret, base64url, 16 bytes (RFC 8291 §3.2).
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings

MAX_ENDPOINT_LENGTH = 2048
BASE64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


def b64url_decode(value: str) -> bytes:
    """Base64url, padded or not (RFC 4648 §5); ValueError if it is not."""
    if not isinstance(value, str) or not BASE64URL.match(value):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(value.rstrip("=") + "=" * (-len(value.rstrip("=")) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def push_service_allowed(endpoint: str) -> bool:
    """Whether `endpoint` is on a push service of WEBPUSH_PUSH_SERVICES: an entry without a
    port matches the host and its subdomains over https (`notify.windows.com` matches
    `wns2-par02p.notify.windows.com`); an entry with a port (`127.0.0.1:8000`) matches that
    host and port exactly, over http or https."""
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        return False
    host = (parts.hostname or "").lower().rstrip(".")
    if parts.scheme not in ("https", "http") or not host or parts.username or parts.password:
        return False
    for entry in settings.WEBPUSH_PUSH_SERVICES:
        entry = entry.lower().strip().rstrip(".")
        name, _, entry_port = entry.rpartition(":") if re.search(r":\d+$", entry) else (entry, "", "")
        if entry_port:
            if host == name and port == int(entry_port):
                return True
        elif parts.scheme == "https" and port in (None, 443) and (host == name or host.endswith("." + name)):
            return True
    return False


def check_subscription(value) -> dict:
    """The subscription as stored (`{"endpoint", "keys": {"p256dh", "auth"}}`, nothing else),
    or ValueError with `args[0]` a dict of field → messages."""
    if not isinstance(value, dict):
        raise ValueError({"webpush_subscription": ["A subscription is {endpoint, keys: {p256dh, auth}} or null."]})
    errors: dict[str, list[str]] = {}
    endpoint = value.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        errors["endpoint"] = ["This field is required."]
    elif len(endpoint) > MAX_ENDPOINT_LENGTH:
        errors["endpoint"] = [f"At most {MAX_ENDPOINT_LENGTH} characters."]
    elif urlsplit(endpoint).scheme not in ("https", "http"):
        errors["endpoint"] = ["The endpoint is an https URL."]
    elif not push_service_allowed(endpoint):
        errors["endpoint"] = ["The endpoint is not on a known push service (WEBPUSH_PUSH_SERVICES), "
                              "or not https."]
    keys = value.get("keys")
    if not isinstance(keys, dict):
        errors["keys"] = ["This field is required: {p256dh, auth}."]
        keys = {}
    p256dh, auth = keys.get("p256dh"), keys.get("auth")
    if "keys" not in errors:
        try:
            raw = b64url_decode(p256dh)
            if len(raw) != 65 or raw[0] != 4:
                raise ValueError("not an uncompressed point")
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        except (ValueError, TypeError):
            errors["keys.p256dh"] = ["A P-256 public key: base64url of a 65-byte uncompressed point."]
        try:
            if len(b64url_decode(auth)) != 16:
                raise ValueError("not 16 bytes")
        except (ValueError, TypeError):
            errors["keys.auth"] = ["The authentication secret: base64url of 16 bytes."]
    if errors:
        raise ValueError(errors)
    return {"endpoint": endpoint, "keys": {"p256dh": p256dh.rstrip("="), "auth": auth.rstrip("=")}}
