"""No private API of Django, asgiref or twilio where the product meets their internals
(issue 14): callpull/http.py (Django's request handling), callpull/asgi.py (the static
files handler), callpull/telephony/asgi.py and callpull/telephony/provider.py (the SDK's
client) name no underscore attribute or import, and provider.py sets no base URL on the
SDK's client (an undocumented attribute): its custom HTTP client moves the requests."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("callpull/http.py", "callpull/asgi.py", "callpull/telephony/asgi.py", "callpull/telephony/provider.py")
UNDOCUMENTED = {"base_url", "close_at"}  # twilio's Domain.base_url; Django's DatabaseWrapper.close_at


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def findings():
    found = []
    for where in MODULES:
        for node in ast.walk(ast.parse((ROOT / where).read_text(), where)):
            if isinstance(node, ast.Attribute) and (private(node.attr) or node.attr in UNDOCUMENTED):
                found.append(f"{where}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.ImportFrom):
                names = [alias.name for alias in node.names]
                if any(private(part) for part in (node.module or "").split(".")) or any(map(private, names)):
                    found.append(f"{where}:{node.lineno}: from {node.module} import {', '.join(names)}")
    return found


def test_the_modules_meeting_django_and_twilio_name_nothing_private():
    assert findings() == []


def test_the_check_sees_a_private_name(tmp_path, monkeypatch):
    for where in MODULES:
        (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / where).write_text("")
    (tmp_path / MODULES[0]).write_text("from django.core.handlers import _x\nresponse._handler_class = 1\n")
    (tmp_path / MODULES[3]).write_text("client.api.base_url = 'http://fake'\nstatic._should_handle('/')\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert findings() == ["callpull/http.py:1: from django.core.handlers import _x",
                          "callpull/http.py:2: ._handler_class",
                          "callpull/telephony/provider.py:1: .base_url",
                          "callpull/telephony/provider.py:2: ._should_handle"]
