"""httpx writes one INFO line per request, every poll included: off unless BANANA_DEBUG is set."""

from __future__ import annotations


def test_httpx_request_lines_are_off_unless_banana_debug(monkeypatch):
    import logging

    from banana_pack.nodes.comfy_glue import quiet_http_logs

    httpx_log = logging.getLogger("httpx")
    monkeypatch.setattr(httpx_log, "level", logging.NOTSET)
    monkeypatch.delenv("BANANA_DEBUG", raising=False)
    quiet_http_logs()
    assert not httpx_log.isEnabledFor(logging.INFO) and httpx_log.isEnabledFor(logging.WARNING)
    monkeypatch.setenv("BANANA_DEBUG", "1")
    monkeypatch.setattr(logging.getLogger("nano_banana_bridge"), "level", logging.NOTSET)
    quiet_http_logs()
    assert httpx_log.level == logging.INFO
