"""Every protocol family implements one typed interface; generate() dispatches on it, not on attribute names."""

from __future__ import annotations

import pytest

from banana_pack.providers import ConfigError
from banana_pack.providers.catalog import FAMILIES
from banana_pack.providers.protocols import AsyncFamily, SyncFamily, family_for

ASYNCHRONOUS = {"fal_queue", "async_tasks"}  # the families whose jobs are journaled (submit, then wait)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_catalog_family_implements_its_interface(family):
    module = family_for(family)
    if family in ASYNCHRONOUS:
        assert isinstance(module, AsyncFamily)
    else:
        assert isinstance(module, SyncFamily) and not isinstance(module, AsyncFamily)


def test_an_unknown_family_is_a_config_error():
    with pytest.raises(ConfigError, match="Unknown protocol family 'carrier_pigeon'"):
        family_for("carrier_pigeon")
