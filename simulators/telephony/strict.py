"""Twilio's REST surface as Twilio's API description draws it.

The simulator's Twilio REST routes are checked against
`spec/twilio_api_v2010.subset.json` (extracted from twilio-oai's
`twilio_api_v2010.json` by `spec/extract.py`) before a handler runs, so a
request real Twilio would refuse is refused here too, with Twilio's error body:

- a path whose parameters break the description's patterns or lengths (an
  AccountSid that is not `AC` + 32 hex, a conference named by its friendly name
  where only its SID is documented, ...): 404, code 20404;
- a method the description does not give the path: 405, code 20004 (also for
  DeleteCall, which Twilio has but the simulator does not play);
- a missing required parameter, a value outside an enum, a bad integer, boolean,
  pattern, length or URL: 400, with the code Twilio's error dictionary gives that
  parameter (`CODES`), else the dictionary's code for the resource (`FALLBACK`).

Parameters the description does not list are ignored, as Twilio ignores them
(its warning 20001, "Unknown parameters ... were ignored"); `check` returns
their names so the simulator can say so. The description gives no error codes:
the codes come from https://www.twilio.com/docs/api/errors (see
docs/SIMULATOR.md, "Strict Twilio REST").

`conformance` checks an answer against the description's response schema: the
tests run every response the simulator gives through it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from simulators.telephony.common import SimulatorError

SUBSET = Path(__file__).resolve().parent / "spec" / "twilio_api_v2010.subset.json"
API_PREFIX = "/2010-04-01/"
# Operations the description has on the simulator's paths that the simulator does not play.
NOT_PLAYED = frozenset({"DeleteCall"})
# Twilio's error dictionary (https://www.twilio.com/docs/api/errors/<code>), per parameter.
CODES = {
    ("CreateCall", "To"): "21201",  # No 'To' number specified
    ("CreateCall", "From"): "21213",  # Caller phone number is required
    ("CreateCall", "Url"): "21205",  # Invalid URL
    ("CreateCall", "Method"): "21209",  # Invalid Method
    ("CreateCall", "Timeout"): "21208",  # Invalid Timeout
    ("CreateCall", "StatusCallbackEvent"): "21626",  # Invalid 'StatusCallbackEvent'
    ("UpdateCall", "Url"): "21205",
    ("UpdateCall", "Method"): "21209",
    ("CreateParticipant", "To"): "21201",
    ("CreateParticipant", "From"): "21213",
    ("CreateParticipant", "Timeout"): "21208",
    ("CreateParticipant", "Label"): "16024",  # Participant label invalid
    ("CreateParticipant", "StatusCallbackEvent"): "21626",
}
# Otherwise: 21200 "Calls Resource" (errors related to the Calls resource), or 16002 "Failed to
# validate conference attributes" for conferences and participants.
FALLBACK = {"Call": "21200", "Conference": "16002", "Participant": "16002"}
# Documented in prose only (https://www.twilio.com/docs/api/errors/16024 and the Participant
# resource's `label`): at most 128 characters, not a CallSid, no '/'.
LABEL_MAX = 128
# CreateCall's Twiml, in its description's words: "Max 4000 characters".
TWIML_MAX = 4000
# UpdateConference's Sid has no pattern in the description, but is "The Twilio-provided string
# that uniquely identifies the Conference resource": the SID FetchConference patterns.
SAME_AS = {("UpdateConference", "Sid"): ("FetchConference", "Sid")}
CALL_SID = re.compile(r"^CA[0-9a-f]{32}$")


@dataclass(frozen=True)
class Operation:
    id: str
    method: str
    template: str
    regex: re.Pattern
    path_params: dict
    query_params: dict
    form_params: dict | None
    answer: dict

    @property
    def resource(self) -> str:
        return next(name for name in ("Participant", "Conference", "Call") if self.id.endswith(name))

    def code_for(self, name: str) -> str:
        return CODES.get((self.id, name), FALLBACK[self.resource])


class Spec:
    """The subset of Twilio's API description the simulator serves."""

    def __init__(self, data: dict):
        self.source = data["source"]
        self.schemas = data["schemas"]
        self.operations: dict[str, Operation] = {}
        for op_id, op in data["operations"].items():
            self.operations[op_id] = Operation(
                id=op_id, method=op["method"], template=op["path"], regex=_template(op["path"]),
                path_params=op["path_params"], query_params=op["query_params"], form_params=op["form_params"],
                answer=op["answer"])

    # -- requests ------------------------------------------------------------------

    def operation(self, method: str, path: str) -> tuple[Operation, dict[str, str]]:
        """The operation for `method` on `path` (under /2010-04-01/) and its path parameters.
        SimulatorError 404 (no such path, or a parameter off its pattern) or 405."""
        shapes = [(op, match) for op in self.operations.values() if (match := op.regex.match(path))]
        if not shapes:
            raise not_found(path)
        for op, match in shapes:
            if op.method == method:
                args = {name: unquote(value) for name, value in match.groupdict().items()}
                for name, value in args.items():
                    other, other_name = SAME_AS.get((op.id, name), (op.id, name))
                    if _problem(value, self.operations[other].path_params.get(other_name, {})) is not None:
                        raise not_found(path)
                if op.id in NOT_PLAYED:
                    raise SimulatorError(405, "20004", f"Method not allowed: the simulator does not play {op.id}.",
                                         {"Allow": ", ".join(sorted(o.method for o, _ in shapes
                                                                    if o.id not in NOT_PLAYED))})
                return op, args
        allowed = sorted({op.method for op, _ in shapes if op.id not in NOT_PLAYED})
        raise SimulatorError(405, "20004", f"Method not allowed: {method}.", {"Allow": ", ".join(allowed)})

    def check(self, op: Operation, *, query: str, body: bytes) -> list[str]:
        """Refuse what Twilio refuses (SimulatorError 400); return the parameters it would
        ignore (in the query of a read, in the body of a create or update)."""
        ignored = _check_params(op, op.query_params, parse_qsl(query, keep_blank_values=True), "query string")
        if op.form_params is not None:
            pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
            ignored += _check_params(op, op.form_params, pairs, "post body")
            form = dict(pairs)
            if op.id == "CreateParticipant":
                _check_label(op, form.get("Label"))
            if op.id == "CreateCall" and len(form.get("Twiml", "")) > TWIML_MAX:
                raise SimulatorError(400, op.code_for("Twiml"), f"Twiml is longer than {TWIML_MAX} characters.")
        return ignored

    # -- answers ---------------------------------------------------------------------

    def conformance(self, op: Operation, status: int, body) -> list[str]:
        """What in this answer departs from the description (empty: it conforms)."""
        answer = op.answer
        if status != answer["status"]:
            return [f"status {status}, the description answers {answer['status']}"]
        if "schema" in answer:
            return self.resource_problems(answer["schema"], body)
        if "page" in answer:
            page = answer["page"]
            if not isinstance(body, dict):
                return ["the page is not an object"]
            problems = _object_problems(body, {**page["properties"], page["key"]: {"type": "array"}}, "page")
            for index, item in enumerate(body.get(page["key"]) or []):
                problems += [f"{page['key']}[{index}]: {p}" for p in self.resource_problems(page["items"], item)]
            return problems
        return [] if body is None else ["an answer without a body has one"]

    def resource_problems(self, schema: str, body) -> list[str]:
        if not isinstance(body, dict):
            return [f"{schema} is not an object"]
        return _object_problems(body, self.schemas[schema]["properties"], schema)


def not_found(path: str) -> SimulatorError:
    return SimulatorError(404, "20404", f"The requested resource {path} was not found")


@cache
def load(path: Path = SUBSET) -> Spec:
    return Spec(json.loads(path.read_text()))


def _template(path: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", path)
    pattern = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts))
    return re.compile(pattern + "$")


def _check_params(op: Operation, documented: dict, pairs: list[tuple[str, str]], where: str) -> list[str]:
    given: dict[str, list[str]] = {}
    for name, value in pairs:
        given.setdefault(name, []).append(value)
    for name, schema in documented.items():
        values = given.get(name)
        if schema.get("required") and (not values or all(value == "" for value in values)):
            raise SimulatorError(400, op.code_for(name), f"Missing required parameter {name} in the {where}.")
        if not values:
            continue
        for value in values if schema.get("type") == "array" else values[-1:]:
            problem = _problem(value, schema.get("items", {}) if schema.get("type") == "array" else schema)
            if problem is not None:
                raise SimulatorError(400, op.code_for(name), f"Invalid {name}: {problem}.")
    return sorted(name for name in given if name not in documented)


def _check_label(op: Operation, label: str | None) -> None:
    if label is None:
        return
    if len(label) > LABEL_MAX or CALL_SID.match(label) or "/" in label:
        raise SimulatorError(400, op.code_for("Label"),
                             "Participant label invalid: max 128 chars, not a CallSid, no '/'.")


def _problem(value: str, schema: dict) -> str | None:
    """Why the form/query/path value breaks `schema`, or None."""
    kind = schema.get("type", "string")
    if kind == "integer":
        if not re.fullmatch(r"-?[0-9]+", value):
            return f"{value!r} is not an integer"
        number = int(value)
        if "minimum" in schema and number < schema["minimum"]:
            return f"{number} is below {schema['minimum']}"
        if "maximum" in schema and number > schema["maximum"]:
            return f"{number} is above {schema['maximum']}"
        return None
    if kind == "boolean":
        return None if value.lower() in ("true", "false") else f"{value!r} is not true or false"
    if kind == "number":
        try:
            float(value)
        except ValueError:
            return f"{value!r} is not a number"
        return None
    if "enum" in schema and value not in schema["enum"]:
        return f"{value!r} is not one of {', '.join(schema['enum'])}"
    if "minLength" in schema and len(value) < schema["minLength"]:
        return f"shorter than {schema['minLength']} characters"
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        return f"longer than {schema['maxLength']} characters"
    if "pattern" in schema and not re.search(schema["pattern"], value):
        return f"{value!r} does not match {schema['pattern']}"
    if schema.get("format") == "uri" and value != "":
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return f"{value!r} is not an absolute http(s) URL"
    return None


JSON_TYPES = {"string": str, "integer": int, "boolean": bool, "object": dict, "array": list}


def _object_problems(body: dict, properties: dict, where: str) -> list[str]:
    problems = [f"{where}: {name} is missing" for name in properties if name not in body]
    problems += [f"{where}: {name} is not in the description" for name in body if name not in properties]
    for name, schema in properties.items():
        if name not in body:
            continue
        value = body[name]
        if value is None:
            # An enum given by $ref cannot say `nullable` in OpenAPI 3.0; Twilio's enum descriptions
            # say when it is null (reason_conference_ended: "When a conference is in progress, will be null").
            if not schema.get("nullable") and "enum_schema" not in schema:
                problems.append(f"{where}: {name} is null")
            continue
        expected = JSON_TYPES.get(schema.get("type", "string"), object)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            problems.append(f"{where}: {name} is {type(value).__name__}, not {schema.get('type')}")
        elif isinstance(value, str):
            if "enum" in schema and value not in schema["enum"]:
                problems.append(f"{where}: {name} {value!r} is not one of {schema['enum']}")
            if "pattern" in schema and not re.search(schema["pattern"], value):
                problems.append(f"{where}: {name} {value!r} does not match {schema['pattern']}")
    return problems
