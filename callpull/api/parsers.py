"""The API's JSON parser: DRF's, with a nesting limit checked before parsing.

Python's json module parses nested arrays and objects by recursion: a body of
`[` repeated 100,000 times (no authentication needed to send one) ends in a
RecursionError. The depth is measured first by a flat scan of the bytes
(brackets outside strings, no recursion), and a body nested deeper than
`API_JSON_MAX_DEPTH` is refused with 400 `json_too_deep`; no API body needs more
than a few levels. Anything json cannot read is 400 `malformed_json`. (The body's
size is bounded before: callpull.http, and Django's DATA_UPLOAD_MAX_MEMORY_SIZE
check as DRF reads `request.body`.)
"""

import json
import re

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser, get_encoding
from rest_framework.utils import json as drf_json

from devices.errors import ServiceError

# A JSON string (skipped: brackets inside it are text), its closing quote optional so that a
# string that never ends is read once to the end rather than retried from each quote inside
# it (linear time on any input), or one bracket.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)
_OPENING = {"[", "{"}


def too_deep(text: str, limit: int) -> bool:
    """Whether arrays and objects in `text` nest deeper than `limit` (`[]` is depth 1),
    by one flat pass over it: no recursion, whatever the input."""
    if text.count("[") + text.count("{") <= limit:
        return False  # most bodies: too few brackets to be too deep, wherever they are
    depth = 0
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in _OPENING:
            depth += 1
            if depth > limit:
                return True
        elif token in ("]", "}"):
            depth -= 1
    return False


def json_too_deep(limit: int) -> ServiceError:
    return ServiceError("json_too_deep", f"The JSON body is nested more than {limit} levels deep.")


class BoundedJSONParser(JSONParser):
    """DRF's JSONParser, refusing bodies nested deeper than API_JSON_MAX_DEPTH."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = get_encoding(parser_context or {})  # text charsets only, as DRF's
        limit = settings.API_JSON_MAX_DEPTH
        try:
            text = stream.read().decode(encoding)
        except ValueError as exc:  # bytes that are not in the declared encoding
            raise ParseError(f"JSON parse error - {exc}") from None
        if too_deep(text, limit):
            raise json_too_deep(limit)
        parse_constant = drf_json.strict_constant if self.strict else None
        try:
            return json.loads(text, parse_constant=parse_constant)
        except RecursionError:  # not reached with a sane limit: the scan came first
            raise json_too_deep(limit) from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
