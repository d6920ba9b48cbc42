"""The suite's own guard (conftest.loopback_only): tests talk to 127.0.0.1 and nothing else."""

from __future__ import annotations

import asyncio
import socket

import pytest


def test_a_connection_past_this_machine_is_refused_and_recorded(loopback_only):
    with pytest.raises(OSError, match="test guard"):
        socket.create_connection(("93.184.216.34", 443), timeout=1)

    async def through_asyncio():
        await asyncio.open_connection("2001:db8::1", 443)

    with pytest.raises(OSError, match="test guard"):
        asyncio.run(through_asyncio())
    with pytest.raises(OSError, match="test guard"):
        socket.create_connection(("files-api.evolink.ai", 443), timeout=1)  # not even looked up
    assert [address[0] for address in loopback_only] == ["93.184.216.34", "2001:db8::1", "files-api.evolink.ai"]
    loopback_only.clear()  # wanted here; anywhere else the test would fail at teardown


def test_loopback_still_connects():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname(), timeout=5):
            pass
