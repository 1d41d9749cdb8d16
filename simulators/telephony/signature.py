"""Twilio's request signature, written from its published description.

X-Twilio-Signature = base64(HMAC-SHA1(auth token, URL + every POST parameter's
name and value, sorted by name)). For a GET request the parameters are in the
URL's query string and no body parameters are appended. This deliberately does
not use the twilio SDK: the product validates with the SDK, so a match here
means both sides read the algorithm the same way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping

HEADER = "X-Twilio-Signature"


def _pairs(params: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    items = params.items() if isinstance(params, Mapping) else params
    return [(str(key), str(value)) for key, value in items]


def signature(auth_token: str, url: str, params: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> str:
    """The X-Twilio-Signature value for a request to `url` with these form parameters.
    A name given several times contributes each of its values, in sorted order."""
    payload = url + "".join(key + value for key, value in sorted(_pairs(params)))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def is_valid(auth_token: str, url: str, params, received: str | None) -> bool:
    return received is not None and hmac.compare_digest(signature(auth_token, url, params), received)
