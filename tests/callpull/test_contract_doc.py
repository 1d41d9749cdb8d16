"""docs/CONTRACT.md names exactly the endpoints, events and FCM keys of the code.

Endpoints come from the URL resolver (method and path; the OpenAPI schema checks how the
methods are read), event types and FCM data keys from the product's source, read with
`ast` rather than imported (modules move; what they send stays):

- an event type is a string passed to a function that sends one (`notify`, `fanout`,
  `fanout_prepare`, `call_event`, `announce_pull`, `frame`: as an argument or as
  `event_type=`, directly, through `a if … else b`, or through a module constant), or the
  `"type"` of a frame written with `send_json`;
- besides, any string in the product that looks like an event type
  (`call.…`, `pull.…`, `account.…`, `device.…`, `presence.…`; docstrings, dict keys and
  error field names aside) must be documented;
- an FCM data key is a key of a dict returned by a function `fcm_data`, passed as
  `fcm_data=`, or built from `**fcm_data`.

The doc names an endpoint by a heading ``### `METHOD /path` ``, an event by a heading
``#### `type` `` in its WebSocket section, an FCM key by a table row in its FCM section;
every other ``METHOD /path`` it mentions must be a real endpoint too.
"""

import ast
import re
from pathlib import Path

from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.generators import SchemaGenerator

from notifications.routing import websocket_urlpatterns

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "CONTRACT.md"
PRODUCT = ("callpull", "notifications", "devices")
# Dev tools that play a client (simulate_call, listen): what they read is not what the product sends.
NOT_PRODUCT = {"migrations", "management"}
PREFIXES = ("/api/v1/", "/telephony/twilio/", "/metrics")
METHODS = ("get", "post", "put", "patch", "delete")

SENDERS = {"notify", "fanout", "fanout_prepare", "call_event", "announce_pull", "frame"}
EVENT_LIKE = re.compile(r"^(call|pull|account|device|presence)\.[a-z_.]+$")
HEADING_ENDPOINT = re.compile(r"^### `(GET|POST|PUT|PATCH|DELETE) (/\S*)`$", re.M)
MENTIONED_ENDPOINT = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s?]*)")
HEADING_EVENT = re.compile(r"^#### `([a-z_.]+)`$", re.M)
TABLE_KEY = re.compile(r"^\| `([a-z_]+)` \|", re.M)


# What the code has ------------------------------------------------------------------

def _route(pattern) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(pattern.pattern))


def _walk(patterns, prefix="/"):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + _route(entry))
        elif isinstance(entry, URLPattern):
            yield prefix + _route(entry), entry.callback


def _methods(path: str, callback) -> set[str]:
    view_class = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    if view_class is not None:
        return {method.upper() for method in METHODS if hasattr(view_class, method)}
    # Function views: the provider's webhooks take POST only (require_POST), the API index GET.
    return {"POST"} if path.startswith("/telephony/") else {"GET"}


def code_endpoints(prefixes: tuple[str, ...] = PREFIXES) -> set[tuple[str, str]]:
    """(method, path) of every URL pattern under `prefixes`: the API and the webhooks."""
    return {(method, path) for path, callback in _walk(get_resolver().url_patterns)
            if path.startswith(prefixes) for method in _methods(path, callback)}


def schema_endpoints() -> set[tuple[str, str]]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return {(method.upper(), path) for path, operations in schema["paths"].items() for method in operations}


def product_sources() -> dict[str, str]:
    return {str(path.relative_to(ROOT)): path.read_text()
            for package in PRODUCT for path in sorted((ROOT / package).rglob("*.py"))
            if not NOT_PRODUCT & set(path.relative_to(ROOT).parts)}


def _name(func) -> str | None:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _strings(node, constants: dict[str, str]) -> set[str]:
    """The strings an expression can be: a literal, either branch of `a if c else b`, a
    module constant."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _strings(node.body, constants) | _strings(node.orelse, constants)
    if isinstance(node, ast.Name) and node.id in constants:
        return {constants[node.id]}
    return set()


def _module_constants(tree: ast.Module) -> dict[str, str]:
    return {target.id: statement.value.value for statement in tree.body if isinstance(statement, ast.Assign)
            and isinstance(statement.value, ast.Constant) and isinstance(statement.value.value, str)
            for target in statement.targets if isinstance(target, ast.Name)}


def _docstrings(tree: ast.Module) -> set[int]:
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def sent_frame_types(sources: dict[str, str]) -> set[str]:
    """Every event type the product sends (WebSocket frames and FCM messages alike)."""
    found = set()
    for text in sources.values():
        tree = ast.parse(text)
        constants = _module_constants(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _name(node.func)
            if name in SENDERS:
                for argument in node.args:
                    found |= _strings(argument, constants)
            for keyword in node.keywords:
                if keyword.arg == "event_type":
                    found |= _strings(keyword.value, constants)
            if name == "send_json":
                for argument in node.args:
                    if isinstance(argument, ast.Dict):
                        found |= {value for key, item in zip(argument.keys, argument.values, strict=True)
                                  if isinstance(key, ast.Constant) and key.value == "type"
                                  for value in _strings(item, constants)}
    return found


def event_like_strings(sources: dict[str, str]) -> set[str]:
    """Every string in the product that looks like an event type, but docstrings, dict
    keys and the names of fields in errors (`device.kind`)."""
    found = set()
    for text in sources.values():
        tree = ast.parse(text)
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                skip |= {id(key) for key in node.keys if key is not None}
            elif isinstance(node, ast.keyword) and node.arg in {"field", "fields"}:
                skip.add(id(node.value))
        found |= {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                  and isinstance(node.value, str) and EVENT_LIKE.match(node.value) and id(node) not in skip}
    return found


def fcm_data_keys(sources: dict[str, str]) -> set[str]:
    found = set()

    def keys(node) -> set[str]:
        return {key.value for key in node.keys if isinstance(key, ast.Constant) and isinstance(key.value, str)}

    for text in sources.values():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "fcm_data":
                for returned in ast.walk(node):
                    if isinstance(returned, ast.Return) and isinstance(returned.value, ast.Dict):
                        found |= keys(returned.value)
            elif isinstance(node, ast.keyword) and node.arg == "fcm_data" and isinstance(node.value, ast.Dict):
                found |= keys(node.value)
            elif isinstance(node, ast.Dict) and any(
                    key is None and _name(value) == "fcm_data" for key, value in zip(node.keys, node.values,
                                                                                      strict=True)):
                found |= keys(node)
    return found


# What the doc says --------------------------------------------------------------------

def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}.*?(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"docs/CONTRACT.md has no section '## {title}'"
    return match.group(0)


def doc_endpoints(text: str) -> set[tuple[str, str]]:
    return set(HEADING_ENDPOINT.findall(text))


def doc_mentions(text: str) -> set[tuple[str, str]]:
    return set(MENTIONED_ENDPOINT.findall(text))


def doc_events(text: str) -> set[str]:
    return set(HEADING_EVENT.findall(_section(text, "WebSocket")))


def doc_fcm_keys(text: str) -> set[str]:
    return set(TABLE_KEY.findall(_section(text, "FCM data messages")))


def _matches(mention: tuple[str, str], endpoints: set[tuple[str, str]]) -> bool:
    """`PATCH /api/v1/devices/me` is `PATCH /api/v1/devices/{device_id}`."""
    method, path = mention
    for known_method, known_path in endpoints:
        pattern = "^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(known_path)) + "$"
        if method == known_method and re.match(pattern, path):
            return True
    return False


# The tests ------------------------------------------------------------------------------

def test_every_endpoint_of_the_url_conf_has_its_section():
    missing = code_endpoints() - doc_endpoints(DOC.read_text())
    assert not missing, f"endpoints without a '### `METHOD /path`' section in docs/CONTRACT.md: {sorted(missing)}"


def test_every_endpoint_the_doc_names_exists():
    text = DOC.read_text()
    assert not doc_endpoints(text) - code_endpoints(), "sections for endpoints the URL conf does not have"
    everything = code_endpoints(prefixes=("/",))  # `GET /`, the web companion, may be mentioned too
    unknown = {mention for mention in doc_mentions(text) if not _matches(mention, everything)}
    assert not unknown, f"docs/CONTRACT.md mentions endpoints the URL conf does not have: {sorted(unknown)}"


def test_the_schema_operations_are_the_url_confs():
    """How the methods are read from the URL conf, checked against the OpenAPI schema."""
    api = {(method, path) for method, path in code_endpoints() if path.startswith("/api/v1/")}
    schema = schema_endpoints()
    assert schema and schema <= api
    # The three outside the schema: the index, the schema itself and its browsable docs.
    outside = {("GET", "/api/v1/"), ("GET", "/api/v1/schema/"), ("GET", "/api/v1/docs/")}
    assert api - schema == outside, f"the URL conf and the schema differ: {sorted((api - schema) ^ outside)}"


def test_every_event_the_product_sends_is_documented_and_nothing_more():
    sources = product_sources()
    sent, documented = sent_frame_types(sources), doc_events(DOC.read_text())
    assert {"call.ringing", "hello", "account.changed", "device.presence"} <= sent  # the scan reads the product
    assert not sent - documented, f"events sent but not in docs/CONTRACT.md: {sorted(sent - documented)}"
    assert not documented - sent, f"events in docs/CONTRACT.md the product never sends: {sorted(documented - sent)}"
    looking = event_like_strings(sources) - documented
    assert not looking, f"strings in the product that look like undocumented event types: {sorted(looking)}"


def test_the_fcm_data_keys_are_the_codes():
    keys = fcm_data_keys(product_sources())
    assert {"type", "id", "call_id"} <= keys
    assert keys == doc_fcm_keys(DOC.read_text())


def test_the_websocket_route_is_documented():
    text = DOC.read_text()
    for pattern in websocket_urlpatterns:
        assert f"## WebSocket `/{pattern.pattern}`" in text


# The checks themselves can fail --------------------------------------------------------

def test_a_section_removed_from_the_doc_is_an_endpoint_missing():
    text = DOC.read_text()
    heading = "### `POST /api/v1/ws-tickets`\n"
    assert heading in text
    assert code_endpoints() - doc_endpoints(text.replace(heading, "")) == {("POST", "/api/v1/ws-tickets")}


def test_an_event_removed_from_the_doc_is_an_event_missing():
    text = DOC.read_text()
    heading = "#### `pull.denied`\n"
    assert heading in text
    assert sent_frame_types(product_sources()) - doc_events(text.replace(heading, "")) == {"pull.denied"}


def test_a_mention_of_a_path_that_does_not_exist_is_caught():
    endpoints = {("PATCH", "/api/v1/devices/{device_id}"), ("POST", "/api/v1/calls/{call_id}/pull")}
    assert _matches(("PATCH", "/api/v1/devices/me"), endpoints)
    assert _matches(("POST", "/api/v1/calls/{id}/pull"), endpoints)
    assert not _matches(("GET", "/api/v1/devices/me"), endpoints)
    assert not _matches(("POST", "/api/v1/calls/{call_id}/push"), endpoints)


def test_the_scanners_read_every_way_of_sending():
    source = '''
"""A docstring naming call.in_a_docstring."""
EVENT = "account.constant"


def fcm_data(call):
    return {"call_id": "1", "caller": ""}


def send(call, approve, kind):
    notify(call, "call.positional", devices, now=now)
    announce_pull(pull, "pull.yes" if approve else "pull.no", now=now)
    fanout(event_type=EVENT, payload={}, fcm_data={"action": "x"})
    frame("hello", device={})
    self.send_json({"type": "pong"})
    data = {**fcm_data, "type": kind, "id": "1"}
    needs = {"device.connect": True}
    to_e164(value, field="device.phone_number")
    if kind == "call.compared":
        log.info("call.ringing sent")
'''
    sources = {"x.py": source}
    assert sent_frame_types(sources) == {"call.positional", "pull.yes", "pull.no", "account.constant", "hello",
                                         "pong"}
    assert event_like_strings(sources) == {"account.constant", "call.positional", "pull.yes", "pull.no",
                                           "call.compared"}
    assert fcm_data_keys(sources) == {"call_id", "caller", "action", "type", "id"}
