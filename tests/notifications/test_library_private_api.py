"""No private API of Channels, channels_redis, uvicorn or websockets in the
product (issue 14): no underscore name or module imported from them, no import of
channels_redis at all (notifications/layers.py implements the channel layer spec
itself), and uvicorn's undocumented modules only in the one pinned module,
callpull/management/commands/serve.py (tests/notifications/test_library_uvicorn.py)."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("callpull", "notifications", "devices")
LIBRARIES = ("channels", "channels_redis", "uvicorn", "websockets")
UVICORN_INTERNALS_ALLOWED_IN = "callpull/management/commands/serve.py"
# uvicorn's documented entry points: uvicorn.run / uvicorn.Config / uvicorn.Server.
UVICORN_PUBLIC_MODULES = {"uvicorn"}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield node.module, alias.name


def _findings():
    found = []
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            where = path.relative_to(ROOT).as_posix()
            for module, name in _imports(path):
                parts = module.split(".")
                if parts[0] not in LIBRARIES:
                    continue
                if parts[0] == "channels_redis":
                    found.append(f"{where}: imports {module}")
                if any(part.startswith("_") for part in parts) or (name or "").startswith("_"):
                    found.append(f"{where}: imports the private {module}.{name or ''}")
                if parts[0] == "uvicorn" and module not in UVICORN_PUBLIC_MODULES \
                        and where != UVICORN_INTERNALS_ALLOWED_IN:
                    found.append(f"{where}: imports uvicorn's internal {module}")
    return found


def test_the_product_imports_no_private_api_of_the_asgi_libraries():
    assert _findings() == []


def test_the_check_sees_a_private_import(tmp_path, monkeypatch):
    (tmp_path / "callpull").mkdir()
    (tmp_path / "callpull" / "bad.py").write_text(
        "from channels.layers import _private\nfrom channels_redis.core import RedisChannelLayer\n"
        "from uvicorn.protocols.utils import get_path_with_query_string\n")
    for package in PRODUCT[1:]:
        (tmp_path / package).mkdir()
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _findings() == ["callpull/bad.py: imports the private channels.layers._private",
                           "callpull/bad.py: imports channels_redis.core",
                           "callpull/bad.py: imports uvicorn's internal uvicorn.protocols.utils"]
