"""docs/PROVIDER.md stays true: it lists every REST request callpull/telephony/provider.py makes,
with the parameters it sends, under an operation Twilio's API description (the extract) has,
and every webhook parameter callpull/telephony/ reads."""

import ast
import re
from pathlib import Path

from simulators.telephony import strict

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "PROVIDER.md"
PROVIDER = ROOT / "callpull" / "telephony" / "provider.py"
TELEPHONY = ROOT / "callpull" / "telephony"
SPEC = strict.load()
# The SDK's verbs and resources, as the description names its operations (CreateCall, ...).
VERBS = {"create": "Create", "update": "Update", "fetch": "Fetch", "delete": "Delete", "list": "List"}
RESOURCES = {"calls": "Call", "conferences": "Conference", "participants": "Participant"}
# SDK keyword → Twilio parameter where it is not the CamelCase of the keyword.
SDK_NAMES = {"from_": "From", "limit": "PageSize", "page_size": "PageSize"}
ROW = re.compile(r"^\| `(\w+)` \| `(\w+)` \| `(GET|POST|DELETE) ([^`]+)` \| ([^|]+) \|", re.M)
PARAMETER_ROW = re.compile(r"^\| `(\w+)` \| [^|]+ \| [^|]+ \| [^|]+ \|$", re.M)
READ = re.compile(r"""params(?:\.get\(|\[)\s*["'](\w+)["']""")


def section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _camel(keyword: str) -> str:
    return SDK_NAMES.get(keyword) or "".join(part.capitalize() for part in keyword.split("_"))


class Provider:
    """What provider.py's functions send, read from its source."""

    def __init__(self):
        tree = ast.parse(PROVIDER.read_text())
        self.functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}

    def _calls(self, name: str) -> set[str]:
        return {node.func.id for node in ast.walk(self.functions[name])
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in self.functions}

    def reaches_client(self, name: str, seen=()) -> bool:
        called = self._calls(name)
        return "_client" in called or any(self.reaches_client(other, (*seen, name))
                                           for other in called - {*seen, name, "_client"})

    def rest_functions(self) -> list[str]:
        return sorted(name for name in self.functions if not name.startswith("_") and self.reaches_client(name))

    def _resource(self, receiver) -> str | None:
        while True:
            if isinstance(receiver, ast.Attribute):
                if receiver.attr in RESOURCES:
                    return RESOURCES[receiver.attr]
                receiver = receiver.value
            elif isinstance(receiver, ast.Call):
                if isinstance(receiver.func, ast.Name) and receiver.func.id in self.functions \
                        and receiver.func.id != "_client":  # a helper returning a resource context
                    returned = [node.value for node in ast.walk(self.functions[receiver.func.id])
                                if isinstance(node, ast.Return) and node.value is not None]
                    return self._resource(returned[0]) if returned else None
                receiver = receiver.func
            else:
                return None

    def request(self, name: str) -> tuple[str, set[str]]:
        """(operationId, the parameters sent) of the function's one SDK request."""
        function = self.functions[name]
        found = []
        for node in ast.walk(function):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in VERBS:
                resource = self._resource(node.func.value)
                if resource is not None:
                    found.append((VERBS[node.func.attr] + resource, node))
        assert len(found) == 1, (name, [op for op, _ in found])
        operation, call = found[0]
        keywords = set()
        for keyword in call.keywords:
            keywords |= {keyword.arg} if keyword.arg else self._splatted(function, keyword.value)
        return operation, {_camel(keyword) for keyword in keywords}

    @staticmethod
    def _splatted(function, value) -> set[str]:
        """The keys of a dict given as **name: its literals, name.update(k=…), name["k"] = …."""
        assert isinstance(value, ast.Name), ast.dump(value)
        keys = set()
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == value.id
                                                    for t in node.targets):
                keys |= {key.value for d in ast.walk(node.value) if isinstance(d, ast.Dict)
                         for key in d.keys if isinstance(key, ast.Constant)}
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name)
                                                    and t.value.id == value.id for t in node.targets):
                keys |= {t.slice.value for t in node.targets if isinstance(t, ast.Subscript)
                         and isinstance(t.slice, ast.Constant)}
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == value.id:
                keys |= {keyword.arg for keyword in node.keywords if keyword.arg}
        return keys


def documented_requests() -> dict[str, tuple[str, str, str, set[str]]]:
    rows = {}
    for function, operation, method, path, parameters in ROW.findall(section("REST requests")):
        assert function not in rows, f"{function} twice"
        rows[function] = (operation, method, path, set(re.findall(r"`(\w+)`", parameters)))
    return rows


def test_every_rest_request_of_provider_py_is_documented_with_what_it_sends():
    provider = Provider()
    rows = documented_requests()
    assert sorted(rows) == provider.rest_functions()
    for function, (operation, _, _, parameters) in rows.items():
        assert provider.request(function) == (operation, parameters), function


def test_every_documented_request_is_an_operation_of_the_description_with_those_parameters():
    for function, (operation, method, path, parameters) in documented_requests().items():
        op = SPEC.operations[operation]
        assert (method, path) == (op.method, op.template), function
        documented = {**op.query_params, **(op.form_params or {})}
        assert parameters <= set(documented), (function, parameters - set(documented))
    named = set(re.findall(r"\b(?:Create|Fetch|Update|Delete|List)(?:Call|Conference|Participant)\b",
                           DOC.read_text()))
    assert named and named <= set(SPEC.operations), named - set(SPEC.operations)


def test_every_webhook_parameter_callpull_reads_is_documented():
    read = {name for path in sorted(TELEPHONY.glob("*.py")) for name in READ.findall(path.read_text())}
    documented = set(PARAMETER_ROW.findall(section("Webhooks and callbacks")))
    assert read and read == documented, {"read, not documented": read - documented,
                                         "documented, not read": documented - read}
