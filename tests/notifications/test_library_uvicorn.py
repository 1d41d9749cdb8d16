"""uvicorn's internals are used in one place only, pinned: `manage.py serve`'s
DeviceWebSocketProtocol (callpull/management/commands/serve.py). An upgrade of
uvicorn or websockets fails here until that module is re-checked."""

from importlib.metadata import version

from callpull.management.commands import serve


def test_the_installed_uvicorn_is_the_one_device_websocket_protocol_was_checked_against():
    installed = version("uvicorn")
    assert installed == serve.UVICORN_CHECKED, (
        f"uvicorn {installed} is installed; DeviceWebSocketProtocol (callpull/management/commands/serve.py) "
        f"subclasses uvicorn {serve.UVICORN_CHECKED}'s undocumented websockets-sansio protocol. Re-check what "
        "the comment above UVICORN_CHECKED lists, then set it to the new version.")


def test_the_installed_websockets_is_the_one_device_websocket_protocol_was_checked_against():
    installed = version("websockets")
    assert installed == serve.WEBSOCKETS_CHECKED, (
        f"websockets {installed} is installed; DeviceWebSocketProtocol (callpull/management/commands/serve.py) "
        f"was checked against websockets {serve.WEBSOCKETS_CHECKED} (its handshake request kept by the frame "
        "parser, ServerProtocol's and the deflate factory's arguments). Re-check, then set WEBSOCKETS_CHECKED.")


def test_the_protocol_replaces_only_attributes_uvicorns_protocol_sets_itself():
    """What DeviceWebSocketProtocol swaps must exist on uvicorn's protocol as built
    (a rename upstream would leave ours setting attributes nobody reads)."""
    base = serve.DeviceWebSocketProtocol.__mro__[1]
    source = open(base.__init__.__code__.co_filename).read()
    for attribute in ("self.queue", "self.writable", "self.conn", "self.request", "self.response",
                      "def start_keepalive"):
        assert attribute in source, f"uvicorn's {base.__name__} has no {attribute} any more: re-check serve.py"
