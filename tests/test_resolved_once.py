"""The provider is resolved once per run and passed down: every call of a batch goes where the run began."""

from __future__ import annotations

import pytest

from banana_pack.nodes.batch import OK, BatchSettings, expand_items, run_batch
from fake_providers import point_presets_at, script_all
from helpers import run
from loopback import LoopbackServer


@pytest.fixture
def elsewhere():
    srv = LoopbackServer().start()
    script_all(srv)
    yield srv
    srv.stop()


def test_a_config_change_during_a_run_does_not_move_its_calls(server, elsewhere, monkeypatch):
    point_presets_at(server, monkeypatch.setenv)
    script_all(server)

    def repoint(_progress) -> None:  # the user edits the settings once the run has started
        monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", f"{elsewhere.url}/google")

    items = expand_items(["a", "b", "c"], [], seed=1)
    outcomes = run(run_batch(items, BatchSettings(provider="google", model="Nano Banana"), store=None, on_update=repoint))
    assert [o.status for o in outcomes] == [OK, OK, OK]
    assert len(server.hits("POST", r":generateContent$")) == 3 and elsewhere.requests == []
